"""Reading every image format the listing accepts, as 8-bit RGB."""

import cv2
import numpy as np
import pytest

from model.data import (
    IMAGE_SUFFIXES,
    list_images,
    list_test_samples,
    read_image,
    read_mask,
    to_uint8,
)
from model.errors import DatasetError


def _gradient(dtype: type, height: int = 24, width: int = 40) -> np.ndarray:
    top = np.iinfo(dtype).max
    row = np.linspace(0, top, width).round().astype(dtype)
    return np.repeat(row[None, :], height, axis=0)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_listed_suffix_reads_as_rgb_uint8(tmp_path, suffix):
    bgr = np.zeros((24, 40, 3), dtype=np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR order
    bgr[:, 20:, 0] = 100
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), bgr)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (24, 40, 3)
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int)
    error = np.abs(image.astype(int) - expected)
    if suffix in (".png", ".bmp", ".tif", ".tiff"):
        assert error.max() == 0
    else:  # lossy codecs: chroma subsampling smears the sharp colour edge
        assert error.mean() < 4
    assert list_images(tmp_path) == [path]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_maps_its_full_range_to_8_bits(tmp_path, suffix):
    sixteen = _gradient(np.uint16)
    path = tmp_path / f"el{suffix}"
    assert cv2.imwrite(str(path), sixteen)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (24, 40, 3)
    assert (image[:, :, 0] == image[:, :, 2]).all()
    np.testing.assert_array_equal(image[:, :, 0], (sixteen >> 8).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".jpg"])
def test_the_model_reads_the_pixels_the_workers_read(tmp_path, suffix):
    """The CLI's reader and the producer's / trainer job's (OpenCV) agree on every format."""
    from pipeline.files import read_image_file

    depth = np.uint16 if suffix in (".png", ".tif") else np.uint8
    gray = _gradient(depth)
    path = tmp_path / f"frame{suffix}"
    assert cv2.imwrite(str(path), gray)
    np.testing.assert_array_equal(read_image(path), read_image_file(path))


def test_16_bit_mapping_is_the_same_for_every_image():
    """A dim 16-bit image stays dim: no per-image stretch that would hide a dark area."""
    dim = np.full((4, 4), 1000, dtype=np.uint16)
    bright = np.full((4, 4), 60000, dtype=np.uint16)
    assert to_uint8(dim).max() == 3 and to_uint8(bright).min() == 234


def test_other_sample_types_are_refused_by_name():
    with pytest.raises(DatasetError, match="float32"):
        to_uint8(np.zeros((4, 4), dtype=np.float32))


def test_tiff_mask_reads_as_bool(tmp_path):
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:8, 2:10] = 255
    assert cv2.imwrite(str(tmp_path / "mask.tif"), mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.tif"), mask > 127)


@pytest.mark.parametrize("payload", [b"", b"II*\x00garbage", b"BM\x00\x01", b"\x89PNG\r\n\x1a\nxx"])
def test_undecodable_files_raise_a_dataset_error_with_the_path(tmp_path, payload):
    path = tmp_path / "broken.tif"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=r"broken\.tif"):
        read_image(path)


def test_masks_are_found_under_mvtec_and_plain_names_in_any_format(tmp_path):
    image = np.full((16, 16, 3), 128, dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    (tmp_path / "test" / "good").mkdir(parents=True)
    (tmp_path / "test" / "crack").mkdir()
    (tmp_path / "ground_truth" / "crack").mkdir(parents=True)
    for name in ("g.png", "a.png", "b.jpg"):
        folder = "good" if name.startswith("g") else "crack"
        assert cv2.imwrite(str(tmp_path / "test" / folder / name), image)
    assert cv2.imwrite(str(tmp_path / "ground_truth" / "crack" / "a_mask.bmp"), mask)
    assert cv2.imwrite(str(tmp_path / "ground_truth" / "crack" / "b.tif"), mask)
    samples = {sample.name: sample for sample in list_test_samples(tmp_path)}
    assert samples["crack/a"].mask_path.name == "a_mask.bmp"
    assert samples["crack/b"].mask_path.name == "b.tif"
    np.testing.assert_array_equal(samples["crack/b"].load()[1], mask > 127)
    (tmp_path / "ground_truth" / "crack" / "b.tif").unlink()
    with pytest.raises(DatasetError, match="missing mask"):
        list_test_samples(tmp_path)
