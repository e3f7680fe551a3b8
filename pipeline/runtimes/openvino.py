"""The OpenVINO runtime: the detector as OpenVINO IR, compiled for the CPU.

Compiled with float32 inference precision by default (OpenVINO would otherwise pick
bfloat16 on CPUs that have it, which is faster but moves scores by about 1 %; ``bf16``
asks for it explicitly), one stream, a latency hint and ``threads``
inference threads (0: OpenVINO's choice). ``openvino`` is imported only when a model is
opened.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtimes import Detector, ModelLoader
from pipeline.runtimes.exported import load_exported

NAME = "openvino"
FORMAT = "openvino"


def session(folder: Path, export: Any, device: str, threads: int,
            precision: str = "f32") -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Compiles ``model.xml``; returns ``batch -> (scores, heatmaps)``.

    Raises:
        ValueError: A device other than the CPU, or an unknown precision.
    """
    if precision not in ("f32", "bf16"):
        raise ValueError(f"precision {precision!r}: f32 or bf16")
    import openvino

    if device != "cpu":
        raise ValueError(f"the openvino runtime runs on the CPU here, not {device!r}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                              "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    request = compiled.create_infer_request()
    scores_port, heatmaps_port = compiled.output("scores"), compiled.output("heatmaps")

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = request.infer({"images": batch})
        # copies: the request's output buffers are reused by the next call
        return np.array(result[scores_port]), np.array(result[heatmaps_port])

    return run


def load_model(artifact: Path, device: str = "cpu", *, line: str | None = None,
               cache_dir: Path | None = None, threads: int = 0,
               expected_backbone: str | None = None, precision: str = "f32") -> Detector:
    """Exports (or reuses the cached export of) an artifact and compiles it in OpenVINO."""
    runtime = NAME if precision == "f32" else f"{NAME}-{precision}"
    return load_exported(artifact, runtime, FORMAT, partial(session, precision=precision),
                         device, line=line,
                         cache_dir=cache_dir, threads=threads,
                         expected_backbone=expected_backbone)


def loader(expected_backbone: str | None = None, cache_dir: Path | None = None,
           threads: int = 0, precision: str = "f32") -> ModelLoader:
    """A model-store loader (see :mod:`pipeline.runtimes`)."""

    def load(path: Path, device: str, line: str) -> Detector:
        return load_model(path, device, line=line, cache_dir=cache_dir, threads=threads,
                          expected_backbone=expected_backbone, precision=precision)

    return load
