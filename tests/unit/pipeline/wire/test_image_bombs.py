"""Declared sizes are read before decoding: bombs are refused cheaply, valid files decode."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from pipeline.errors import FrameError
from pipeline.wire.codec import ImageLimits, decode_frame
from pipeline.wire.image_headers import declared_size
from pipeline.wire.messages import Encoding, FrameMessage

CORPUS = Path(__file__).resolve().parents[3] / "corpus"
ROOT = CORPUS.parents[1]


def _frame(payload: bytes, width: int, height: int) -> FrameMessage:
    return FrameMessage("cam", "line", "f1", time.time(), Encoding.JPEG, width, height, payload)


def _files(prefix: str) -> list[Path]:
    files = sorted(CORPUS.glob(f"{prefix}-*"))
    assert files, f"no {prefix} files in {CORPUS} (run tests/corpus/make_corpus.py)"
    return files


@pytest.mark.parametrize("path", _files("valid"), ids=lambda p: p.name)
def test_every_supported_format_declares_its_size_and_decodes(path: Path) -> None:
    data = path.read_bytes()
    declared = declared_size(data)
    assert (declared.width, declared.height) == (32, 32)
    image = decode_frame(_frame(data, 32, 32), ImageLimits())
    assert image.shape == (32, 32, 3)


@pytest.mark.parametrize("path", _files("bomb"), ids=lambda p: p.name)
@pytest.mark.parametrize("headers_say", ["small", "the truth"])
def test_a_bomb_is_refused_without_decoding(path: Path, headers_say: str) -> None:
    """A tiny file declaring a huge image: refused in well under 0.5 s and 20 MB."""
    data = path.read_bytes()
    declared = declared_size(data)
    assert declared.pixels > ImageLimits().max_pixels
    width, height = (32, 32) if headers_say == "small" else (declared.width, declared.height)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(FrameError) as refused:
            decode_frame(_frame(data, width, height), ImageLimits())
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "image_too_large"
    print(f"\n{path.name} ({len(data)} bytes, declares {declared.width}x{declared.height}, "
          f"headers say {width}x{height}): refused in {elapsed * 1000:.2f} ms, "
          f"peak {peak / 1024:.0f} KiB traced")
    assert elapsed < 0.5
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize("path", _files("truncated") + _files("malformed") + _files("unsupported"),
                         ids=lambda p: p.name)
def test_truncated_malformed_and_unsupported_files_are_frame_errors(path: Path) -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame(_frame(path.read_bytes(), 32, 32), ImageLimits())
    assert refused.value.reason in {"undecodable_payload", "unsupported_format",
                                    "size_mismatch"}


def test_headers_that_disagree_with_the_file_are_refused_before_decoding() -> None:
    data = (CORPUS / "valid-png.png").read_bytes()
    with pytest.raises(FrameError) as refused:
        decode_frame(_frame(data, 64, 64), ImageLimits())
    assert refused.value.reason == "size_mismatch"
    assert "declares 32x32" in str(refused.value)


def test_the_pixel_limit_applies_even_when_each_side_fits() -> None:
    limits = ImageLimits(max_side=4096, max_pixels=32 * 31)
    with pytest.raises(FrameError) as refused:
        decode_frame(_frame((CORPUS / "valid-jpeg.jpg").read_bytes(), 32, 32), limits)
    assert refused.value.reason == "image_too_large"


def test_opencv_refusing_an_image_is_a_decode_error_not_a_crash() -> None:
    """OpenCV's own pixel cap (OPENCV_IO_MAX_IMAGE_PIXELS, the backstop) raises cv2.error;
    the codec turns it into a DecodeError. A child process: OpenCV reads the cap once."""
    code = (
        "from pathlib import Path; import time\n"
        "from pipeline.errors import DecodeError\n"
        "from pipeline.wire.codec import ImageLimits, decode_frame\n"
        "from pipeline.wire.messages import Encoding, FrameMessage\n"
        f"data = Path({str(CORPUS / 'valid-jpeg.jpg')!r}).read_bytes()\n"
        "frame = FrameMessage('c', 'l', 'f', time.time(), Encoding.JPEG, 32, 32, data)\n"
        "try:\n"
        "    decode_frame(frame, ImageLimits())\n"
        "except DecodeError as error:\n"
        "    print('refused', error.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "100",
                                           "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused undecodable_payload" in done.stdout
