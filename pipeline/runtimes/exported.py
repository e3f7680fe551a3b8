"""Runtimes that run an exported graph (ONNX Runtime, OpenVINO): export cache and detector.

A promoted artifact is exported on load (``model.export``) into a cache folder keyed by
the artifact file's SHA-256 and the format, ``<cache>/<sha256>-<format>/``, and reused by
every later load of the same artifact (by this worker or another one sharing the cache).
Every exported file is checked against the SHA-256 in the export's metadata before use: a
modified file is refused with a clear error, and the model store keeps serving the line's
previous model. The artifact itself is verified (its own checksum) before it is exported.

Pre- and post-processing stay in NumPy: resize (when a frame is not ``S x S``) and
normalise on the way in, the calibration's affine map on the way out, so the detectors
return the same :class:`model.detector.Prediction` as the PyTorch runtime.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ArtifactError

logger = logging.getLogger(__name__)

#: ``(model folder, export metadata, device, threads) -> run``; ``run`` maps a normalised
#: ``[B, 3, S, S]`` float32 batch to raw ``(scores [B], heatmaps [B, S, S])``.
SessionFactory = Callable[[Path, Any, str, int],
                          Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]


def default_cache_dir() -> Path:
    """Where exported models go when no cache folder is configured."""
    return Path(tempfile.gettempdir()) / "linewatch-runtime-cache"


def exported_folder(artifact: Path, runtime_format: str, cache_dir: Path | None) -> tuple[
        Path, str]:
    """The cache folder of an artifact's export and the artifact's SHA-256."""
    from model.export import file_sha256

    sha = file_sha256(artifact)
    return (cache_dir or default_cache_dir()) / f"{sha}-{runtime_format}", sha


def ensure_exported(artifact: Path, runtime_format: str, cache_dir: Path | None,
                    line: str | None = None, expected_backbone: str | None = None) -> tuple[
                        Path, Any]:
    """Verify an artifact, export it unless its export is cached, verify the export.

    Args:
        artifact: The safetensors artifact.
        runtime_format: ``onnx`` or ``openvino``.
        cache_dir: Cache folder (None: :func:`default_cache_dir`).
        line: Product line the artifact must belong to (None: any).
        expected_backbone: Backbone the artifact must be fitted on (None: any).

    Returns:
        The export's folder and its verified ``model.export.ExportMetadata``.

    Raises:
        ArtifactError: The artifact is corrupt, tampered or of another line/backbone.
        ExportError: The export failed, or a cached exported file does not match its
            recorded checksum (refused; delete the folder to export again).
    """
    from model.artifact import read_metadata
    from model.export import METADATA_NAME, export_detector, read_export

    metadata = read_metadata(artifact)  # the artifact's own checksum
    if line is not None and metadata.product_line != line:
        raise ArtifactError(f"{artifact} is a model for line {metadata.product_line!r}, "
                            f"expected {line!r}")
    if expected_backbone is not None and metadata.backbone != expected_backbone:
        raise ArtifactError(f"{artifact} was fitted on backbone {metadata.backbone!r}, "
                            f"expected {expected_backbone!r}")
    folder, sha = exported_folder(artifact, runtime_format, cache_dir)
    if not (folder / METADATA_NAME).is_file():
        logger.info("exporting %s to %s (%s)", artifact.name, runtime_format, folder)
        export_detector(artifact, folder, runtime_format, replace=False)
    return folder, read_export(folder, sha)


class ExportedDetector:
    """A detector whose network runs in an inference runtime; ``predict`` as in PyTorch.

    Args:
        run: The runtime's call (see :data:`SessionFactory`).
        export: The verified export metadata.
        runtime: Runtime name, for logs and ``repr``.
    """

    def __init__(self, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 export: Any, runtime: str) -> None:
        self._run = run
        self.export = export
        self.metadata = export.detector
        self.runtime = runtime
        std = np.asarray(export.std, dtype=np.float32)
        mean = np.asarray(export.mean, dtype=np.float32)
        # (x / 255 - mean) / std == x * scale + offset, per channel
        self._scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
        self._offset = (-mean / std).reshape(1, 3, 1, 1)
        self._lock = threading.Lock()  # one call at a time per compiled model

    def __repr__(self) -> str:
        return (f"ExportedDetector({self.runtime}, line={self.metadata.product_line}, "
                f"version={self.metadata.version})")

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 frames -> normalised ``[B, 3, S, S]`` float32 (as ``images_to_tensor``).

        Raises:
            ValueError: No images, or an array that is not an image.
        """
        size = self.metadata.image_size
        if images and all(isinstance(image, np.ndarray) and image.dtype == np.uint8
                          and image.shape == (size, size, 3) for image in images):
            batch = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
        else:  # other sizes, grayscale, odd input: the PyTorch runtime's own resize
            from model.detector import images_to_tensor

            batch = images_to_tensor(images, size, (0.0, 0.0, 0.0),
                                     (1 / 255, 1 / 255, 1 / 255)).numpy()
        batch *= self._scale
        batch += self._offset
        return np.ascontiguousarray(batch)

    def predict(self, images: Sequence[np.ndarray]) -> Any:
        """Scores frames and builds their heatmaps.

        Returns:
            A ``model.detector.Prediction``.
        """
        from model.detector import Prediction

        batch = self.preprocess(images)
        with self._lock:
            scores, heatmaps = self._run(batch)
        calibration = self.metadata.calibration
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        normalized = np.asarray(calibration.normalize(scores), dtype=np.float32)
        heatmaps = np.asarray(
            calibration.normalize(np.asarray(heatmaps, dtype=np.float32)), dtype=np.float32)
        return Prediction(scores=scores, normalized_scores=normalized,
                          labels=normalized >= 0.5, heatmaps=heatmaps)

    def warm_up(self, batch_size: int = 1) -> None:
        """Runs one dummy batch (first calls pay the runtime's start-up)."""
        size = self.metadata.image_size
        self.predict([np.zeros((size, size, 3), dtype=np.uint8)] * batch_size)


def load_exported(artifact: Path, runtime: str, runtime_format: str, session: SessionFactory,
                  device: str, *, line: str | None = None, cache_dir: Path | None = None,
                  threads: int = 0, expected_backbone: str | None = None) -> ExportedDetector:
    """Export (or reuse the cached export of) an artifact and open it in a runtime.

    Raises:
        ModelError: Bad artifact, failed export, tampered export, or the runtime refused
            the model (all in ``pytorch.LOAD_ERRORS``: the previous model keeps serving).
    """
    from model.export import ExportError

    folder, export = ensure_exported(Path(artifact), runtime_format, cache_dir, line,
                                     expected_backbone)
    try:
        run = session(folder, export, device, threads)
    except (ImportError, ExportError):
        raise
    except Exception as error:  # runtimes raise their own types; name the model
        raise ExportError(f"{runtime} could not open {folder}: {error}") from error
    detector = ExportedDetector(run, export, runtime)
    logger.info("%s: %s on %s (pid %d)", runtime, folder.name, device, os.getpid())
    return detector
