"""Inference runtimes: how a stored model artifact becomes something the worker can call.

The worker and the model store only know the :class:`Detector` protocol below: a loader
``(artifact path, device, product line) -> Detector`` is handed to
:class:`pipeline.model_store.ModelStore`. One runtime exists today,
:mod:`pipeline.runtimes.pytorch` (``model.artifact``, checksum-verified safetensors).

Adding a runtime (ONNX Runtime, OpenVINO, ...): a module ``pipeline/runtimes/<name>.py``
with a ``loader(...) -> ModelLoader`` whose detectors return the same
:class:`Prediction` fields, a setting in ``workers/inference/settings.py`` that picks it,
and the choice in ``workers/inference/main.py:build_worker``. An exported artifact lives
next to the safetensors file in the store (paths: :mod:`pipeline.wire.layout`).
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
