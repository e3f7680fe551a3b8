"""Reading images and MVTec-AD-layout folders.

JPEG, PNG, WebP and GIF go through torchvision's decoders; TIFF and BMP, which torchvision
cannot decode, through OpenCV's (already a dependency of the project). Every image comes out
as 8-bit RGB: 16-bit images (common for electroluminescence and X-ray cameras) keep their
high byte, the same mapping for every image of a line (and the one OpenCV's reader gives the
workers), so a darker image stays darker: a per-image stretch would hide exactly the
low-contrast defects.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

# torchvision 0.29 marks its image codecs deprecated in favour of torchcodec, which has no
# release pinned with torch 2.14.1 here; they still work and keep model/ free of OpenCV.
warnings.filterwarnings("ignore", message="The image decoding and encoding", module="torchvision")

from model.errors import DatasetError  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Leading bytes of the formats torchvision's decode_image reads; anything else goes to OpenCV.
_TORCHVISION_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF", b"GIF87a", b"GIF89a")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Maps an 8- or 16-bit image to uint8 (16-bit: the high byte, ``v >> 8``).

    The high byte is what OpenCV's ``imread(..., IMREAD_COLOR)`` gives, which the camera
    producer and the trainer job read image folders with: a model fitted here sees the
    same pixels as the workers.

    Raises:
        DatasetError: For any other sample type (e.g. floating-point TIFFs).
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    raise DatasetError(f"unsupported sample type {image.dtype} (8- or 16-bit images only)")


def _decode_opencv(data: bytes) -> np.ndarray:
    """Decodes TIFF, BMP and the other formats OpenCV reads into ``HxWx3`` RGB."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ValueError("not an image OpenCV can decode")
    image = to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """Reads an image file as ``HxWx3`` uint8 RGB (grayscale is repeated, alpha dropped).

    Raises:
        DatasetError: When the file is missing, cannot be decoded or has a sample type
            other than 8 or 16 bits.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data.startswith(_TORCHVISION_MAGIC):
            tensor = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
            array = tensor.permute(1, 2, 0).contiguous().numpy()
            return to_uint8(array)
        return _decode_opencv(data)
    except (OSError, RuntimeError, ValueError, cv2.error) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Raises:
        DatasetError: When the folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_images(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Reads several images (see :func:`read_image`)."""
    return [read_image(path) for path in paths]


def read_mask(path: str | Path) -> np.ndarray:
    """Reads a ground-truth mask at its own size as bool (any non-zero pixel is defect).

    Raises:
        DatasetError: When the file is missing or cannot be decoded.
    """
    return read_image(path)[:, :, 0] > 127


class EvaluationSample(Protocol):
    """A labelled image for :func:`model.evaluation.evaluate`."""

    @property
    def defect_class(self) -> str:
        """``good`` for normal images, else the defect type."""
        ...

    @property
    def is_anomalous(self) -> bool:
        """True for any class other than ``good``."""
        ...

    @property
    def name(self) -> str:
        """Short unique name (``class/stem``) for overlays and reports."""
        ...

    @property
    def has_mask(self) -> bool:
        """True when :meth:`load` returns a ground-truth mask."""
        ...

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns the ``HxWx3`` uint8 image and its ``HxW`` bool mask (or None)."""
        ...


@dataclass(frozen=True)
class TestSample:
    """One test image of an MVTec-layout folder.

    Attributes:
        path: Image file.
        defect_class: Folder name under ``test/`` (``good`` for normal images).
        mask_path: Ground-truth mask, or None (good images, or data labelled per image).
    """

    path: Path
    defect_class: str
    mask_path: Path | None

    @property
    def is_anomalous(self) -> bool:
        """True for any class other than ``good``."""
        return self.defect_class != "good"

    @property
    def name(self) -> str:
        """``class/stem``."""
        return f"{self.defect_class}/{self.path.stem}"

    @property
    def has_mask(self) -> bool:
        """True when a mask file goes with the image."""
        return self.mask_path is not None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Reads the image and its mask (None without one)."""
        mask = read_mask(self.mask_path) if self.mask_path is not None else None
        return read_image(self.path), mask


@dataclass(frozen=True)
class InMemorySample:
    """A labelled image held in memory (e.g. a synthetic defect).

    Attributes:
        image: ``HxWx3`` uint8.
        mask: ``HxW`` bool, or None.
        defect_class: ``good`` or the defect type.
        name: Short unique name.
    """

    image: np.ndarray
    mask: np.ndarray | None
    defect_class: str
    name: str

    @property
    def is_anomalous(self) -> bool:
        """True for any class other than ``good``."""
        return self.defect_class != "good"

    @property
    def has_mask(self) -> bool:
        """True when a mask is held."""
        return self.mask is not None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns the held image and mask."""
        return self.image, self.mask


def find_mask(mask_dir: Path, stem: str) -> Path | None:
    """The mask of image ``stem`` in ``mask_dir``: ``<stem>_mask`` (MVTec AD) or ``<stem>``.

    Any image suffix is accepted (``.png`` first); None when there is none.
    """
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            path = mask_dir / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def list_test_samples(root: str | Path) -> list[TestSample]:
    """Lists ``test/<class>/*`` images with their masks from ``ground_truth/<class>/``.

    Masks are named ``<stem>_mask.png`` as in MVTec AD; ``<stem>.png`` and the other image
    suffixes are accepted too (:func:`find_mask`).

    A class without a ``ground_truth/<class>`` folder is labelled per image only (its
    samples have no mask); a class with the folder must have a mask for every image.

    Raises:
        DatasetError: When the layout is wrong or a mask is missing from a mask folder.
    """
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{root} has no test/ folder (MVTec AD layout expected)")
    samples = []
    for class_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        mask_dir = root / "ground_truth" / class_dir.name
        for image_path in list_images(class_dir):
            mask_path = None
            if class_dir.name != "good" and mask_dir.is_dir():
                mask_path = find_mask(mask_dir, image_path.stem)
                if mask_path is None:
                    raise DatasetError(
                        f"missing mask {mask_dir / image_path.stem}_mask.png for {image_path}"
                    )
            samples.append(TestSample(image_path, class_dir.name, mask_path))
    if not samples:
        raise DatasetError(f"no test images under {test_dir}")
    return samples
