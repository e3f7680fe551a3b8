"""The ONNX Runtime runtime: the detector exported to ONNX, run by ``onnxruntime``.

On the CPU the CPU execution provider; on ``cuda`` the TensorRT and CUDA providers that the
installed build offers (``onnxruntime-gpu``), best first. ``onnxruntime`` is imported only
when a model is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtimes import Detector, ModelLoader
from pipeline.runtimes.exported import load_exported

NAME = "onnxruntime"
FORMAT = "onnx"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def providers(device: str) -> list[Any]:
    """Execution providers for a device, best first.

    Raises:
        ValueError: ``cuda`` asked but this onnxruntime build has no GPU provider.
    """
    import onnxruntime

    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.partition(":")[2] or 0)
    available = onnxruntime.get_available_providers()
    chosen: list[Any] = [(name, {"device_id": index}) for name in GPU_PROVIDERS
                         if name in available]
    if not chosen:
        raise ValueError(f"device {device!r}: this onnxruntime has no CUDA or TensorRT "
                         f"provider (has {available}); install onnxruntime-gpu")
    return [*chosen, "CPUExecutionProvider"]


def session(folder: Path, export: Any, device: str,
            threads: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Opens ``model.onnx``; returns ``batch -> (scores, heatmaps)``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads  # 0: one per core
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # no spin-waiting between calls: the worker shares its cores with decoding and
    # publishing (on 2 busy cores, side by side: 10.9 images/s spinning, 14.3 not)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    inference = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                             providers=providers(device))

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, heatmaps = inference.run(["scores", "heatmaps"], {"images": batch})
        return scores, heatmaps

    return run


def load_model(artifact: Path, device: str = "cpu", *, line: str | None = None,
               cache_dir: Path | None = None, threads: int = 0,
               expected_backbone: str | None = None) -> Detector:
    """Exports (or reuses the cached export of) an artifact and opens it in ONNX Runtime."""
    return load_exported(artifact, NAME, FORMAT, session, device, line=line,
                         cache_dir=cache_dir, threads=threads,
                         expected_backbone=expected_backbone)


def loader(expected_backbone: str | None = None, cache_dir: Path | None = None,
           threads: int = 0) -> ModelLoader:
    """A model-store loader (see :mod:`pipeline.runtimes`)."""

    def load(path: Path, device: str, line: str) -> Detector:
        return load_model(path, device, line=line, cache_dir=cache_dir, threads=threads,
                          expected_backbone=expected_backbone)

    return load
