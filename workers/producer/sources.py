"""Camera sources: where a producer's frames come from.

A source is a :class:`FrameReader`: ``read()`` gives the next RGB frame, or ``None`` at the
end (a live source that dropped). To add a kind of camera (a vendor SDK, GigE Vision, ...),
write a reader class here and teach :func:`open_source` to recognise its ``source`` string;
the producer reopens a live source with backoff when it drops.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.files import list_image_files, read_image_file

logger = logging.getLogger(__name__)


class FrameReader(Protocol):
    """A source of RGB frames."""

    live: bool

    def read(self) -> np.ndarray | None:
        """Next HxWx3 uint8 RGB frame, or None at the end (or when a live source drops)."""
        ...

    def close(self) -> None:
        """Release the source."""
        ...


class OpenCVReader:
    """Video file, RTSP/HTTP URL or device index through ``cv2.VideoCapture``.

    Raises:
        OSError: The source cannot be opened.
    """

    def __init__(self, source: str | int) -> None:
        self.live = isinstance(source, int) or "://" in str(source)
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            self._capture.release()
            raise OSError(f"OpenCV cannot open {source!r}")

    def read(self) -> np.ndarray | None:
        """Next frame (RGB)."""
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Release the capture."""
        self._capture.release()


class ImageFolderReader:
    """The images of a folder, in name order (unreadable files are skipped and logged)."""

    live = False

    def __init__(self, folder: Path) -> None:
        self._paths = list_image_files(folder, recursive=True)
        if not self._paths:
            raise OSError(f"no images in {folder}")
        self._index = 0

    def read(self) -> np.ndarray | None:
        """Next image (RGB)."""
        while self._index < len(self._paths):
            path = self._paths[self._index]
            self._index += 1
            image = read_image_file(path)
            if image is not None:
                return image
            logger.warning("skipping unreadable image %s", path)
        return None

    def close(self) -> None:
        """Nothing to release."""


def open_source(source: str) -> FrameReader:
    """Open a device index, URL, image folder or video file.

    Raises:
        OSError: The source cannot be opened.
    """
    if source.isdigit():
        return OpenCVReader(int(source))
    if "://" not in source and Path(source).is_dir():
        return ImageFolderReader(Path(source))
    if "://" not in source and not Path(source).exists():
        raise OSError(f"{source} does not exist")
    return OpenCVReader(source)
