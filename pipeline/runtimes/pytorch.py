"""The PyTorch runtime: artifacts of the ``model`` package, loaded without unpickling.

``model.artifact`` (and so torch) is imported only when a function here runs, so the
processes that never run a model import none of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ArtifactError, ModelError
from pipeline.runtimes import Detector, ModelLoader

#: Errors a loader raises for an unusable artifact (the previous model keeps serving).
LOAD_ERRORS: tuple[type[BaseException], ...] = (ModelError, OSError, ValueError, RuntimeError)


def resolve_device(device: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def loader(expected_backbone: str | None = None) -> ModelLoader:
    """A loader of checksum-verified artifacts of a line.

    Args:
        expected_backbone: Backbone every artifact must be fitted on (None: any).
    """

    def load(path: Path, device: str, line: str) -> Detector:
        from model.artifact import load_artifact

        return load_artifact(path, device=device, expected_product_line=line,
                             expected_backbone=expected_backbone)

    return load


def save(detector: Any, path: Path) -> None:
    """Write a fitted detector as one artifact file."""
    from model.artifact import save_artifact

    save_artifact(detector, path)


def verified_created_at(path: Path, line: str) -> str:
    """``created_at`` of a verified artifact of ``line`` (checksum checked, no tensors built).

    Raises:
        ModelError: Corrupt, tampered or not an artifact of this line.
    """
    from model.artifact import read_metadata

    metadata = read_metadata(path)
    if metadata.product_line != line:
        raise ArtifactError(f"{path} is a model for line {metadata.product_line!r}")
    return metadata.created_at


def calibration_scores(path: Path) -> np.ndarray:
    """The normalised calibration scores in a verified artifact's header, shape ``[M]``.

    Raises:
        ModelError: Corrupt or tampered artifact.
    """
    from model.artifact import read_metadata

    return np.asarray(read_metadata(path).calibration_scores, dtype=np.float64)
