"""Writes the crafted image corpus beside this script (committed; rerun to regenerate).

``python tests/corpus/make_corpus.py``. For every format the codec reads (JPEG, PNG, GIF,
BMP, TIFF, WebP lossy/lossless/extended): one valid 32x32 file, one bomb (the same file
with its header patched to declare a huge image, checksums fixed where the format has
them) and two truncated copies. Files are tiny (a few kB at most); the fuzz test mutates
them and the bomb tests read the bombs.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((32, 32, 3), 90, np.uint8)
    image[8:24, 8:24] = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return image


def _encode(ext: str, params: list[int] | None = None) -> bytearray:
    ok, buffer = cv2.imencode(ext, _image(), params or [])
    assert ok, ext
    return bytearray(buffer.tobytes())


def _jpeg_bomb(data: bytearray, width: int, height: int) -> bytearray:
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return data


def _png_bomb(data: bytearray, width: int, height: int) -> bytearray:
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return data


def _gif_bomb(data: bytearray, width: int, height: int) -> bytearray:
    struct.pack_into("<HH", data, 6, width, height)
    at = data.index(b"\x2c", 13)
    struct.pack_into("<HH", data, at + 5, width, height)
    return data


def _bmp_bomb(data: bytearray, width: int, height: int) -> bytearray:
    struct.pack_into("<ii", data, 18, width, -height)
    return data


def _tiff_bomb(data: bytearray, width: int, height: int) -> bytearray:
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    for index in range(struct.unpack_from(order + "H", data, ifd)[0]):
        entry = ifd + 2 + 12 * index
        tag = struct.unpack_from(order + "H", data, entry)[0]
        if tag in (256, 257):
            struct.pack_into(order + "HI", data, entry + 2, 4, 1)
            struct.pack_into(order + "I", data, entry + 8, width if tag == 256 else height)
    return data


def _webp_bomb(data: bytearray, width: int, height: int) -> bytearray:
    chunk = bytes(data[12:16])
    if chunk == b"VP8 ":
        struct.pack_into("<HH", data, 26, min(width, 0x3FFF), min(height, 0x3FFF))
    elif chunk == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
        bits |= (min(width, 0x4000) - 1) | ((min(height, 0x4000) - 1) << 14)
        struct.pack_into("<I", data, 21, bits)
    return data


FORMATS = {
    "jpeg": (".jpg", None, _jpeg_bomb, (30000, 30000)),
    "png": (".png", None, _png_bomb, (20000, 20000)),
    "gif": (".gif", None, _gif_bomb, (65535, 65535)),
    "bmp": (".bmp", None, _bmp_bomb, (30000, 30000)),
    "tiff": (".tiff", None, _tiff_bomb, (30000, 30000)),
    "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], _webp_bomb, (16383, 16383)),
    "webp-lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], _webp_bomb, (16384, 16384)),
}


def main() -> None:
    """Write the corpus files (valid, bomb, truncated per format)."""
    for name, (ext, params, bomb, (width, height)) in FORMATS.items():
        valid = _encode(ext, params)
        suffix = ext
        (HERE / f"valid-{name}{suffix}").write_bytes(valid)
        (HERE / f"bomb-{name}-{width}x{height}{suffix}").write_bytes(
            bomb(bytearray(valid), width, height))
        (HERE / f"truncated-head-{name}{suffix}").write_bytes(valid[:20])
        (HERE / f"truncated-half-{name}{suffix}").write_bytes(valid[: len(valid) // 2])
    # a JPEG whose only frame header is preceded by a huge APP segment length (walks off)
    jpeg = _encode(".jpg")
    (HERE / "malformed-jpeg-segment-length.jpg").write_bytes(
        bytes(jpeg[:4]) + b"\xff\xff" + bytes(jpeg[6:]))
    # an extended WebP (VP8X) canvas of 2^24 x 2^24 (OpenCV does not write VP8X itself)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + b"\xff\xff\xff" * 2
    (HERE / "bomb-webp-vp8x-16777216x16777216.webp").write_bytes(
        b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x)
    (HERE / "unsupported-ppm.ppm").write_bytes(b"P6\n30000 30000\n255\n" + b"\0" * 64)


if __name__ == "__main__":
    main()
