"""Inference runtimes: how a stored model artifact becomes something the worker can call.

The worker and the model store only know the :class:`Detector` protocol below: a loader
``(artifact path, device, product line) -> Detector`` is handed to
:class:`pipeline.model_store.ModelStore`. Runtimes (:data:`RUNTIMES`):

* ``torch``: :mod:`pipeline.runtimes.pytorch`, eager PyTorch on the artifact itself;
* ``onnxruntime``: :mod:`pipeline.runtimes.onnxruntime`, the detector exported to ONNX;
* ``openvino``: :mod:`pipeline.runtimes.openvino`, the detector as OpenVINO IR.

The last two export each artifact on load into a cache keyed by the artifact's SHA-256
(:mod:`pipeline.runtimes.exported`) and refuse a cached file that does not match its
recorded checksum. Adding a runtime: a module here with a ``loader(...)`` whose detectors
return the same :class:`Prediction` fields, and its name in :data:`RUNTIMES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Prediction(Protocol):
    """What a detector's ``predict`` returns (see ``model.detector.Prediction``)."""

    scores: np.ndarray  # [B]
    normalized_scores: np.ndarray  # [B], 0.5 = calibrated threshold
    labels: np.ndarray  # [B] bool
    heatmaps: np.ndarray  # [B, S, S] float32, normalised scale


class Detector(Protocol):
    """The slice of a loaded model the worker needs."""

    metadata: Any  # .version, .product_line, .image_size

    def predict(self, images: Sequence[np.ndarray]) -> Prediction:
        """Score HxWx3 uint8 RGB images."""
        ...


ModelLoader = Callable[[Path, str, str], Detector]
"""``(artifact path, device, product line) -> Detector``; raises on a bad artifact."""


RUNTIMES = ("torch", "onnxruntime", "openvino")


def loader(runtime: str, expected_backbone: str | None = None, cache_dir: Path | None = None,
           threads: int = 0, precision: str = "f32") -> ModelLoader:
    """The model-store loader of a runtime.

    Args:
        runtime: One of :data:`RUNTIMES`.
        expected_backbone: Refuse artifacts fitted on another backbone (None: any).
        cache_dir: Where exported forms are cached (exporting runtimes; None: a folder in
            the system's temporary directory).
        threads: Inference threads (exporting runtimes; 0: the runtime's choice).
        precision: ``f32``, or ``bf16`` (openvino only).

    Raises:
        ValueError: Unknown runtime.
    """
    if precision not in ("f32", "bf16") or (precision != "f32" and runtime != "openvino"):
        raise ValueError(f"precision {precision!r}: f32, or bf16 with the openvino runtime")
    if runtime == "torch":
        from pipeline.runtimes import pytorch

        return pytorch.loader(expected_backbone)
    if runtime == "onnxruntime":
        from pipeline.runtimes import onnxruntime

        return onnxruntime.loader(expected_backbone, cache_dir, threads)
    if runtime == "openvino":
        from pipeline.runtimes import openvino

        return openvino.loader(expected_backbone, cache_dir, threads, precision)
    raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")


def load_model(artifact: Path, runtime: str = "torch", device: str = "cpu", *,
               line: str = "", cache_dir: Path | None = None, threads: int = 0,
               precision: str = "f32") -> Detector:
    """Loads an artifact in a runtime (exporting and caching it where the runtime needs).

    Args:
        artifact: The safetensors artifact.
        runtime: One of :data:`RUNTIMES`.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        line: Product line the artifact must belong to ('' : any).
        cache_dir: Export cache (see :func:`loader`).
        threads: Inference threads (see :func:`loader`).
        precision: See :func:`loader`.
    """
    if not line:
        from model.artifact import read_metadata

        line = read_metadata(artifact).product_line
    return loader(runtime, None, cache_dir, threads, precision)(Path(artifact), device, line)
