"""Model store: versioned artifacts per product line in a directory, loaded on demand.

Layout (docs/contracts.md)::

    <store>/<line>/versions/<version>.safetensors
    <store>/<line>/current        # text file holding the current version, replaced atomically

Loaded models live in an LRU cache bounded by count. The ``current`` pointer is re-read
at most every ``refresh_s`` seconds, so a promoted version is picked up between batches.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.errors import ModelError
from pipeline.errors import ModelNotFoundError
from pipeline.messages import validate_id

logger = logging.getLogger(__name__)

_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
ARTIFACT_SUFFIX = ".safetensors"


class PredictionLike(Protocol):
    """What a detector's ``predict`` returns (see ``model.detector.Prediction``)."""

    scores: np.ndarray  # [B]
    normalized_scores: np.ndarray  # [B]
    labels: np.ndarray  # [B] bool
    heatmaps: np.ndarray  # [B, S, S] float32, normalised scale


class MetadataLike(Protocol):
    """The metadata fields the pipeline reads."""

    version: str
    product_line: str
    image_size: int


class Detector(Protocol):
    """The slice of ``model.detector.AnomalyDetector`` the worker needs."""

    metadata: Any

    def predict(self, images: Sequence[np.ndarray]) -> PredictionLike:
        """Score HxWx3 uint8 RGB images."""
        ...


ModelLoader = Callable[[Path, str, str], Detector]
"""``(artifact path, device, product line) -> Detector``."""


def load_with_model_package(path: Path, device: str, line: str) -> Detector:
    """Default loader: ``model.artifact.load_artifact`` (checksum-verified, no pickle)."""
    from model.artifact import load_artifact

    return load_artifact(path, device=device, expected_product_line=line)


def artifact_loader(expected_backbone: str | None = None) -> ModelLoader:
    """A loader like :func:`load_with_model_package` that also refuses other backbones.

    Args:
        expected_backbone: Backbone every artifact must be fitted on (None: any).
    """

    def load(path: Path, device: str, line: str) -> Detector:
        from model.artifact import load_artifact

        return load_artifact(path, device=device, expected_product_line=line,
                             expected_backbone=expected_backbone)

    return load


def resolve_device(device: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_version(version: str) -> str:
    if not _VERSION_PATTERN.match(version):
        raise ValueError(f"model version {version!r} is not a safe file name")
    return version


def artifact_path(root: Path, line: str, version: str) -> Path:
    """Where a line's version lives."""
    return root / validate_id(line, "product line") / "versions" / (
        _check_version(version) + ARTIFACT_SUFFIX)


def set_current(root: Path, line: str, version: str) -> None:
    """Point a line at a version, atomically (write a temp file, then rename).

    Raises:
        FileNotFoundError: The version's artifact is not in the store.
    """
    target = artifact_path(root, line, version)
    if not target.is_file():
        raise FileNotFoundError(f"{target} does not exist")
    line_dir = root / line
    fd, tmp = tempfile.mkstemp(dir=line_dir, prefix=".current-")
    with os.fdopen(fd, "w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, line_dir / "current")


def publish_model(root: Path, detector: Any, save: Callable[[Any, Path], None] | None = None,
                  make_current: bool = True) -> Path:
    """Save a fitted detector into the store under its line and version.

    Args:
        root: Store directory.
        detector: Fitted detector (``metadata.product_line`` and ``metadata.version``).
        save: Saver; defaults to ``model.artifact.save_artifact``.
        make_current: Also point the line's ``current`` at it.

    Returns:
        The artifact path.
    """
    if save is None:
        from model.artifact import save_artifact as save
    line = detector.metadata.product_line
    version = str(detector.metadata.version)
    target = artifact_path(root, line, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    save(detector, tmp)
    os.replace(tmp, target)
    if make_current:
        set_current(root, line, version)
    return target


class ModelStore:
    """Loads the current model of a line on demand and keeps an LRU of loaded models.

    Thread-safe. If a newly promoted version cannot be loaded, the previously loaded
    version of the line keeps serving and the failure is logged.

    Args:
        root: Store directory.
        loader: ``(path, device, line) -> Detector``.
        device: Device to load on.
        cache_size: Most models kept loaded.
        refresh_s: How often the ``current`` pointer is re-read per line.
        on_loaded: Called with (line, version) after each load.
    """

    def __init__(self, root: Path, loader: ModelLoader = load_with_model_package,
                 device: str = "cpu", cache_size: int = 4, refresh_s: float = 5.0,
                 on_loaded: Callable[[str, str], None] | None = None) -> None:
        self.root = Path(root)
        self._loader = loader
        self.device = device
        self._cache_size = cache_size
        self._refresh_s = refresh_s
        self._on_loaded = on_loaded or (lambda line, version: None)
        self._models: OrderedDict[tuple[str, str], Detector] = OrderedDict()
        self._current: dict[str, tuple[str, float]] = {}
        self._failed: dict[tuple[str, str], float] = {}
        self._lock = threading.RLock()

    def current_version(self, line: str) -> str:
        """The version the line's ``current`` pointer names.

        Raises:
            ModelNotFoundError: The line has no model.
        """
        validate_id(line, "product line")
        now = time.monotonic()
        cached = self._current.get(line)
        if cached is not None and now - cached[1] < self._refresh_s:
            return cached[0]
        try:
            version = (self.root / line / "current").read_text().strip()
            _check_version(version)
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"no model for product line {line!r} in {self.root}: "
                                     f"{error}") from None
        self._current[line] = (version, now)
        return version

    def get(self, line: str) -> Detector:
        """The line's current model, loading it if needed.

        Raises:
            ModelNotFoundError: No model exists for the line, or it cannot be loaded and
                no earlier version of the line is loaded.
        """
        with self._lock:
            version = self.current_version(line)
            key = (line, version)
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            failed_at = self._failed.get(key)
            if failed_at is None or time.monotonic() - failed_at >= max(self._refresh_s, 1.0):
                try:
                    return self._load(key)
                except (ModelError, OSError, ValueError, RuntimeError) as error:
                    self._failed[key] = time.monotonic()
                    logger.error("cannot load model %s of line %s: %s", version, line, error)
                    failure: Exception = error
            else:
                failure = RuntimeError("loading failed recently; retrying later")
            fallback = self._latest_loaded(line)
            if fallback is not None:
                logger.warning("line %s keeps serving version %s", line,
                               fallback.metadata.version)
                return fallback
            raise ModelNotFoundError(f"model {version} of line {line!r} cannot be loaded: "
                                     f"{failure}", reason="model_unavailable") from None

    def _load(self, key: tuple[str, str]) -> Detector:
        line, version = key
        path = artifact_path(self.root, line, version)
        started = time.perf_counter()
        detector = self._loader(path, self.device, line)
        logger.info("loaded model %s of line %s on %s in %.2fs", version, line, self.device,
                    time.perf_counter() - started)
        self._models[key] = detector
        self._failed.pop(key, None)
        while len(self._models) > self._cache_size:
            evicted, _ = self._models.popitem(last=False)
            logger.info("evicted model %s of line %s (cache of %d)", evicted[1], evicted[0],
                        self._cache_size)
        self._on_loaded(line, version)
        return detector

    def _latest_loaded(self, line: str) -> Detector | None:
        for (cached_line, _), detector in reversed(self._models.items()):
            if cached_line == line:
                return detector
        return None

    def loaded(self) -> list[tuple[str, str]]:
        """(line, version) of every loaded model, least recently used first."""
        with self._lock:
            return list(self._models)
