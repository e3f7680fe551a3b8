"""Model store: versioned artifacts per product line in a directory, loaded on demand.

Paths: :mod:`pipeline.wire.layout`; the rules for an object store: docs/contracts.md.
Only whole-object writes are used (write a temporary name, then rename), the pointer is
written after the artifact it names, and listing is a prefix listing of ``versions/``, so
an object store (one PUT per object, atomic per key) can back the same layout.

Loaded models live in an LRU cache bounded by count. The ``current`` pointer is re-read
at most every ``refresh_s`` seconds, and at once when :meth:`ModelStore.refresh` is called
(on a promotion notification), so a promoted version is picked up between batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ModelNotFoundError
from pipeline.files import atomic_path, atomic_write
from pipeline.runtimes import Detector, ModelLoader
from pipeline.runtimes import pytorch as default_runtime
from pipeline.wire.layout import (
    ARTIFACT_SUFFIX,
    artifact_path,
    check_version,
    current_path,
    is_version,
    report_path,
    versions_dir,
)
from pipeline.wire.messages import validate_id

logger = logging.getLogger(__name__)


def set_current(root: Path, line: str, version: str) -> None:
    """Point a line at a version, atomically (write a temp file, then rename).

    Raises:
        FileNotFoundError: The version's artifact is not in the store.
    """
    target = artifact_path(root, line, version)
    if not target.is_file():
        raise FileNotFoundError(f"{target} does not exist")
    atomic_write(current_path(root, line), version + "\n")


def publish_model(root: Path, detector: Any, save: Callable[[Any, Path], None] | None = None,
                  make_current: bool = True) -> Path:
    """Save a fitted detector into the store under its line and version.

    Args:
        root: Store directory.
        detector: Fitted detector (``metadata.product_line`` and ``metadata.version``).
        save: Saver; defaults to the PyTorch runtime's (``model.artifact.save_artifact``).
        make_current: Also point the line's ``current`` at it.

    Returns:
        The artifact path.
    """
    line = detector.metadata.product_line
    version = str(detector.metadata.version)
    target = artifact_path(root, line, version)
    with atomic_path(target) as tmp:
        (save or default_runtime.save)(detector, tmp)
    if make_current:
        set_current(root, line, version)
    return target


def read_current(root: Path, line: str) -> str | None:
    """The version a line's ``current`` pointer names, or ``None`` when it has none.

    Raises:
        ValueError: The pointer holds something that is not a version name.
    """
    try:
        text = current_path(root, line).read_text()
    except FileNotFoundError:
        return None
    return check_version(text.strip())


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One stored version of a line.

    Attributes:
        version: Version name.
        path: Artifact path.
        created_at: ISO time from the artifact's verified metadata ('' when unreadable).
        current: Whether the line's ``current`` pointer names it.
        error: Why the artifact cannot be used (``None`` when it verifies).
    """

    version: str
    path: Path
    created_at: str
    current: bool
    error: str | None = None


MetadataReader = Callable[[Path, str], str]
"""``(artifact path, line) -> created_at``; raises when the artifact is unusable."""

#: The default reader: the PyTorch runtime's verified header.
VERIFIED: MetadataReader = default_runtime.verified_created_at


def list_versions(root: Path, line: str,
                  read_created_at: MetadataReader = VERIFIED) -> list[VersionInfo]:
    """Every artifact of a line, oldest first (by creation time, then name).

    Each artifact's header is verified; an unusable one is listed with its ``error`` and
    sorted first (it can be neither served nor rolled back to).
    """
    folder = versions_dir(root, line)
    try:
        current = read_current(root, line)
    except ValueError:
        current = None
    found: list[VersionInfo] = []
    if not folder.is_dir():
        return found
    for path in folder.glob("*" + ARTIFACT_SUFFIX):
        version = path.name.removesuffix(ARTIFACT_SUFFIX)
        if not is_version(version):
            continue
        try:
            created_at, error = read_created_at(path, line), None
        except default_runtime.LOAD_ERRORS as problem:
            created_at, error = "", str(problem)
        found.append(VersionInfo(version, path, created_at, version == current, error))
    found.sort(key=lambda info: (info.error is None, info.created_at, info.version))
    return found


def rollback(root: Path, line: str, to: str | None = None,
             read_created_at: MetadataReader = VERIFIED) -> tuple[str | None, str]:
    """Point a line back at an earlier version (one atomic pointer write).

    Args:
        root: Store directory.
        line: Product line.
        to: Version to serve; by default the newest usable version older than the current.
        read_created_at: Verifies an artifact (see :func:`list_versions`).

    Returns:
        (previous current version, new current version).

    Raises:
        FileNotFoundError: No such version, or nothing older to roll back to.
        ModelError: The chosen artifact does not verify; the pointer is left unchanged.
    """
    current = read_current(root, line)
    if to is not None:
        target = artifact_path(root, line, to)
        if not target.is_file():
            raise FileNotFoundError(f"line {line!r} has no version {to!r} in {root}")
        read_created_at(target, line)
        set_current(root, line, to)
        return current, to
    usable = [info for info in list_versions(root, line, read_created_at) if info.error is None]
    names = [info.version for info in usable]
    older = usable[: names.index(current)] if current in names else []
    if not older:
        raise FileNotFoundError(f"line {line!r} has no usable version older than {current!r}")
    set_current(root, line, older[-1].version)
    return current, older[-1].version


def prune_versions(root: Path, line: str, keep: int,
                   read_created_at: MetadataReader = VERIFIED) -> list[str]:
    """Delete all but the newest ``keep`` versions of a line (the current one always stays).

    Unusable artifacts count as oldest and go first. Workers that already loaded a deleted
    version keep it in memory; none can newly load it because the pointer never names it.

    Returns:
        The deleted versions.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    versions = list_versions(root, line, read_created_at)
    doomed = [info for info in versions[: max(0, len(versions) - keep)] if not info.current]
    for info in doomed:
        info.path.unlink(missing_ok=True)
        report_path(root, line, info.version).unlink(missing_ok=True)
        logger.info("pruned version %s of line %s", info.version, line)
    return [info.version for info in doomed]


class ModelStore:
    """Loads the current model of a line on demand and keeps an LRU of loaded models.

    Thread-safe. If a newly promoted version cannot be loaded, the previously loaded
    version of the line keeps serving and the failure is logged. Loading happens outside
    the cache lock, so a notification thread can load a promoted version (:meth:`refresh`)
    while the worker's loop keeps serving the old one from the cache.

    Args:
        root: Store directory.
        loader: ``(path, device, line) -> Detector`` (a runtime's, see
            :mod:`pipeline.runtimes`).
        device: Device to load on.
        cache_size: Most models kept loaded.
        refresh_s: How often the ``current`` pointer is re-read per line.
        on_loaded: Called with (line, version) after each load.
    """

    def __init__(self, root: Path, loader: ModelLoader, device: str = "cpu",
                 cache_size: int = 4, refresh_s: float = 5.0,
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
        self._lock = threading.RLock()  # guards the dictionaries above
        self._load_lock = threading.Lock()  # one load at a time

    def _read_pointer(self, line: str) -> str:
        try:
            version = read_current(self.root, line)
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"no model for product line {line!r} in {self.root}: "
                                     f"{error}") from None
        if version is None:
            raise ModelNotFoundError(f"no model for product line {line!r} in {self.root}")
        return version

    def current_version(self, line: str) -> str:
        """The version the line's ``current`` pointer names (re-read every ``refresh_s``).

        Raises:
            ModelNotFoundError: The line has no model.
        """
        validate_id(line, "product line")
        now = time.monotonic()
        with self._lock:
            cached = self._current.get(line)
            if cached is not None and now - cached[1] < self._refresh_s:
                return cached[0]
        version = self._read_pointer(line)
        with self._lock:
            self._current[line] = (version, now)
        return version

    def get(self, line: str) -> Detector:
        """The line's current model, loading it if needed.

        Raises:
            ModelNotFoundError: No model exists for the line, or it cannot be loaded and
                no earlier version of the line is loaded.
        """
        key = (line, self.current_version(line))
        cached = self._cached(key)
        if cached is not None:
            return cached
        failure = self._ensure_loaded(key)
        if failure is None:
            cached = self._cached(key)
            if cached is not None:
                return cached
            failure = RuntimeError("evicted right after loading")
        with self._lock:
            fallback = self._latest_loaded(line)
        if fallback is not None:
            logger.warning("line %s keeps serving version %s", line, fallback.metadata.version)
            return fallback
        raise ModelNotFoundError(f"model {key[1]} of line {line!r} cannot be loaded: "
                                 f"{failure}", reason="model_unavailable") from None

    def refresh(self, line: str) -> str | None:
        """Re-read a line's pointer now and load the version it names, then serve it.

        Called from a notification thread: the model is loaded before the cached pointer
        moves, so the worker's loop switches between two batches without waiting.

        Returns:
            The version now served, or ``None`` when the pointer or the model is unusable
            (the previous version keeps serving; the periodic re-check retries).
        """
        try:
            version = self._read_pointer(validate_id(line, "product line"))
        except (ModelNotFoundError, ValueError) as error:
            logger.error("cannot refresh line %s: %s", line, error)
            return None
        failure = self._ensure_loaded((line, version))
        if failure is not None:
            logger.error("line %s: version %s not loaded (%s); keeping the current one",
                         line, version, failure)
            return None
        with self._lock:
            self._current[line] = (version, time.monotonic())
        return version

    def lines(self) -> list[str]:
        """Lines with a loaded model or a cached pointer."""
        with self._lock:
            return sorted({line for line, _ in self._models} | set(self._current))

    def _cached(self, key: tuple[str, str]) -> Detector | None:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def _ensure_loaded(self, key: tuple[str, str]) -> Exception | None:
        """Load ``key`` unless cached or failed recently; the failure, or ``None``."""
        with self._load_lock:
            with self._lock:
                if key in self._models:
                    return None
                failed_at = self._failed.get(key)
            if failed_at is not None and time.monotonic() - failed_at < max(self._refresh_s, 1.0):
                return RuntimeError("loading failed recently; retrying later")
            try:
                self._load(key)
            except default_runtime.LOAD_ERRORS as error:
                with self._lock:
                    self._failed[key] = time.monotonic()
                logger.error("cannot load model %s of line %s: %s", key[1], key[0], error)
                return error
            return None

    def _load(self, key: tuple[str, str]) -> Detector:
        line, version = key
        path = artifact_path(self.root, line, version)
        started = time.perf_counter()
        detector = self._loader(path, self.device, line)
        logger.info("loaded model %s of line %s on %s in %.2fs", version, line, self.device,
                    time.perf_counter() - started)
        with self._lock:
            self._models[key] = detector
            self._failed.pop(key, None)
            while len(self._models) > self._cache_size:
                evicted, _ = self._models.popitem(last=False)
                logger.info("evicted model %s of line %s (cache of %d)", evicted[1],
                            evicted[0], self._cache_size)
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
