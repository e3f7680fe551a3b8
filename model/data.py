"""Reading images and MVTec-AD-layout folders (torchvision's decoders; no OpenCV here)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.io import ImageReadMode, decode_image

# torchvision 0.29 marks its image codecs deprecated in favour of torchcodec, which has no
# release pinned with torch 2.14.1 here; they still work and keep model/ free of OpenCV.
warnings.filterwarnings("ignore", message="The image decoding and encoding", module="torchvision")

from model.errors import DatasetError  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """Reads an image file as ``HxWx3`` uint8 RGB.

    Raises:
        DatasetError: When the file is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        tensor = decode_image(data, mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
    return tensor.permute(1, 2, 0).contiguous().numpy()


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


def read_mask(path: str | Path, size: int) -> np.ndarray:
    """Reads a ground-truth mask resized (nearest) to ``size x size`` as bool."""
    mask = read_image(path)[:, :, 0]
    tensor = torch.from_numpy(mask).float()[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="nearest")[0, 0]
    return (resized > 127).numpy()


@dataclass(frozen=True)
class TestSample:
    """One test image of an MVTec-layout folder.

    Attributes:
        path: Image file.
        defect_class: Folder name under ``test/`` (``good`` for normal images).
        mask_path: Ground-truth mask, or None for good images.
    """

    path: Path
    defect_class: str
    mask_path: Path | None

    @property
    def is_anomalous(self) -> bool:
        """True for any class other than ``good``."""
        return self.defect_class != "good"


def list_test_samples(root: str | Path) -> list[TestSample]:
    """Lists ``test/<class>/*`` images with their ``ground_truth/<class>/<stem>_mask.png``.

    Raises:
        DatasetError: When the layout is wrong or a defect image has no mask.
    """
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{root} has no test/ folder (MVTec AD layout expected)")
    samples = []
    for class_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for image_path in list_images(class_dir):
            mask_path = None
            if class_dir.name != "good":
                mask_path = root / "ground_truth" / class_dir.name / f"{image_path.stem}_mask.png"
                if not mask_path.is_file():
                    raise DatasetError(f"missing mask {mask_path} for {image_path}")
            samples.append(TestSample(image_path, class_dir.name, mask_path))
    if not samples:
        raise DatasetError(f"no test images under {test_dir}")
    return samples
