"""Declared image sizes, read from the file header before any pixel is decoded.

A compressed image says how large it is in a few header bytes; a decoder allocates
whatever it is told. A 701-byte JPEG whose SOF0 declares 30000x30000 makes OpenCV
allocate gigabytes, so the worker reads the declared size first (:func:`declared_size`)
and refuses images that are too large before calling the decoder.

Formats read: JPEG (the first SOF0..SOF15 marker, DHT/JPG/DAC excepted), PNG (IHDR), GIF
(logical screen and every image descriptor), BMP (core and info headers), TIFF (first
IFD, both byte orders) and WebP (VP8, VP8L, VP8X). Anything else is refused with the
reason ``unsupported_format``: OpenCV can decode more formats, and each one would be a
way around the size check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pipeline.errors import DecodeError


@dataclass(frozen=True, slots=True)
class DeclaredSize:
    """What an image header declares.

    Attributes:
        format: ``jpeg``, ``png``, ``gif``, ``bmp``, ``tiff`` or ``webp``.
        width: Declared width in pixels.
        height: Declared height in pixels.
    """

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Declared pixel count."""
        return self.width * self.height


def _truncated(kind: str) -> DecodeError:
    return DecodeError(f"{kind} header is truncated or malformed", reason="undecodable_payload")


def declared_size(data: bytes) -> DeclaredSize:
    """Read the width and height an encoded image declares, without decoding it.

    Args:
        data: Encoded image bytes.

    Returns:
        The declared format and size.

    Raises:
        DecodeError: ``unsupported_format`` for any other format, ``undecodable_payload``
            for a truncated or malformed header.
    """
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if head.startswith(b"BM"):
        return _bmp(data)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(data)
    raise DecodeError(f"payload starts with {head[:8].hex()}: not JPEG, PNG, GIF, BMP, TIFF "
                      "or WebP", reason="unsupported_format")


#: JPEG start-of-frame markers (C0..CF without DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field (TEM, RST0..7, SOI).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg(data: bytes) -> DeclaredSize:
    pos, size = 2, len(data)
    while pos < size:
        if data[pos] != 0xFF:
            raise _truncated("JPEG")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            break
        if pos + 2 > size:
            break
        length = struct.unpack_from(">H", data, pos)[0]
        if length < 2:
            raise _truncated("JPEG")
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 7 > size:
                break
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if height == 0 or width == 0:
                raise DecodeError(f"JPEG frame header declares {width}x{height}",
                                  reason="undecodable_payload")
            return DeclaredSize("jpeg", width, height)
        pos += length
    raise _truncated("JPEG")


def _png(data: bytes) -> DeclaredSize:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise _truncated("PNG")
    width, height = struct.unpack_from(">II", data, 16)
    return DeclaredSize("png", width, height)


def _gif(data: bytes) -> DeclaredSize:
    size = len(data)
    if size < 13:
        raise _truncated("GIF")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if flags & 0x80:
        pos += 3 << ((flags & 0x07) + 1)
    while pos < size:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            if pos + 10 > size:
                break
            left, top, frame_w, frame_h, local = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, left + frame_w), max(height, top + frame_h)
            pos += 10
            if local & 0x80:
                pos += 3 << ((local & 0x07) + 1)
            pos = _skip_sub_blocks(data, pos + 1)  # LZW minimum code size, then data
        else:
            raise _truncated("GIF")
    return DeclaredSize("gif", width, height)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return size


def _bmp(data: bytes) -> DeclaredSize:
    if len(data) < 26:
        raise _truncated("BMP")
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
    elif header_size >= 40:
        width, height = struct.unpack_from("<ii", data, 18)
    else:
        raise _truncated("BMP")
    return DeclaredSize("bmp", abs(width), abs(height))


def _tiff(data: bytes) -> DeclaredSize:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise _truncated("TIFF")
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd + 2 > len(data):
        raise _truncated("TIFF")
    count = struct.unpack_from(order + "H", data, ifd)[0]
    found: dict[int, int] = {}
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(data):
            raise _truncated("TIFF")
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag not in (256, 257):
            continue
        if kind == 3:  # SHORT
            found[tag] = struct.unpack_from(order + "H", data, entry + 8)[0]
        elif kind == 4:  # LONG
            found[tag] = struct.unpack_from(order + "I", data, entry + 8)[0]
        else:
            raise _truncated("TIFF")
    if 256 not in found or 257 not in found:
        raise _truncated("TIFF")
    return DeclaredSize("tiff", found[256], found[257])


def _webp(data: bytes) -> DeclaredSize:
    if len(data) < 30:
        raise _truncated("WebP")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _truncated("WebP")
        width, height = struct.unpack_from("<HH", data, 26)
        return DeclaredSize("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _truncated("WebP")
        bits = struct.unpack_from("<I", data, 21)[0]
        return DeclaredSize("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return DeclaredSize("webp", width, height)
    raise DecodeError(f"WebP chunk {chunk!r} is not VP8, VP8L or VP8X",
                      reason="unsupported_format")
