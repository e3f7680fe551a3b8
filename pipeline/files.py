"""Local files: atomic writes and image folders.

An atomic write goes to a temporary name in the target's directory, is flushed to disk,
renamed over the target and the directory entry is flushed too, so a reader sees the old
content or the new one, never a torn file, even after a power cut. An object store can
back the same pattern with one PUT per object.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

#: Image files read from folders (camera folders, training data, demo data).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path to write; on success it replaces ``target`` durably.

    Args:
        target: File to replace.

    Yields:
        A path in ``target``'s directory (not yet created).

    Raises:
        Whatever the ``with`` body raises; the temporary file is removed then.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def atomic_write(target: Path, data: bytes | str) -> None:
    """Replace ``target`` with ``data`` atomically (text is written as UTF-8)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(target) as tmp:
        tmp.write_bytes(payload)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def list_image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (:data:`IMAGE_SUFFIXES`) in ``folder``, and below it when recursive.

    Raises:
        NotADirectoryError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_file(path: Path) -> np.ndarray | None:
    """An image file as HxWx3 uint8 RGB, or ``None`` when it cannot be decoded."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
