"""Codec of what crosses the wire: frame payloads and the published heatmap PNG.

Frames: RGB images <-> payload bytes (JPEG by default, raw RGB possible), checked against
the worker's limits. Heatmaps: the model's normalised heatmap (0.5 = the calibrated
threshold) is published as a single-channel uint8 PNG where 0 -> 0, 0.5 -> 127 and
anything >= 1 -> 255; dashboards and alert consumers read that scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import DecodeError, FrameError
from pipeline.wire.image_headers import declared_size
from pipeline.wire.messages import Encoding, FrameMessage

#: Bytes one decoded pixel takes (HxWx3 uint8).
BYTES_PER_PIXEL = 3


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds a worker accepts; anything outside goes to the dead-letter topic.

    Attributes:
        min_side: Smallest accepted width or height in pixels.
        max_side: Largest accepted width or height in pixels.
        max_payload_bytes: Largest accepted payload.
        max_pixels: Largest accepted width x height, checked against what the image
            header declares before anything is decoded.
    """

    min_side: int = 16
    max_side: int = 4096
    max_payload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096

    @property
    def max_decoded_bytes(self) -> int:
        """Largest decoded image this codec returns (``max_pixels`` x 3 bytes)."""
        return self.max_pixels * BYTES_PER_PIXEL


def encode_image(
    image: np.ndarray, encoding: Encoding = Encoding.JPEG, jpeg_quality: int = 90
) -> bytes:
    """Encode an RGB image into payload bytes.

    Args:
        image: HxWx3 uint8 RGB.
        encoding: Target encoding.
        jpeg_quality: JPEG quality 1-100.

    Returns:
        The payload.

    Raises:
        ValueError: If the image is not HxWx3 uint8 or the quality is out of range.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
    if encoding is Encoding.RAW:
        return np.ascontiguousarray(image).tobytes()
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"JPEG quality {jpeg_quality} is not in 1..100")
    ok, buffer = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    )
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return buffer.tobytes()


def decode_frame(frame: FrameMessage, limits: ImageLimits) -> np.ndarray:
    """Decode a frame's payload into an RGB image, checking it against the limits.

    The headers' size and the size the image file itself declares are both checked
    before any pixel is decoded (a small file may declare a huge image).

    Args:
        frame: The frame message.
        limits: Accepted bounds.

    Returns:
        HxWx3 uint8 RGB.

    Raises:
        FrameError: ``image_too_small`` / ``image_too_large`` / ``message_too_large``.
        DecodeError: ``empty_payload``, ``undecodable_payload``, ``unsupported_format`` or
            ``size_mismatch``.
    """
    check_size(frame.width, frame.height, limits)
    if len(frame.payload) > limits.max_payload_bytes:
        raise FrameError(
            f"payload of {len(frame.payload)} bytes exceeds {limits.max_payload_bytes}",
            reason="message_too_large",
        )
    if not frame.payload:
        raise DecodeError("payload is empty", reason="empty_payload")
    if frame.encoding is Encoding.RAW:
        expected = frame.width * frame.height * 3
        if len(frame.payload) != expected:
            raise DecodeError(
                f"raw payload has {len(frame.payload)} bytes, expected "
                f"{expected} for {frame.width}x{frame.height}x3",
                reason="size_mismatch",
            )
        return np.frombuffer(frame.payload, np.uint8).reshape(frame.height, frame.width, 3)
    declared = declared_size(frame.payload)
    check_size(declared.width, declared.height, limits)
    if (declared.width, declared.height) != (frame.width, frame.height):
        raise DecodeError(
            f"the {declared.format} header declares {declared.width}x{declared.height}, "
            f"headers say {frame.width}x{frame.height}",
            reason="size_mismatch",
        )
    buffer = np.frombuffer(frame.payload, np.uint8)
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as error:  # OpenCV's own limits: a backstop, never a crash
        raise DecodeError(f"OpenCV refused the {declared.format} payload: "
                          f"{str(error).strip()[-200:]}") from None
    if bgr is None:
        raise DecodeError(f"payload is not a decodable {declared.format} image")
    if bgr.ndim != 3 or bgr.shape[:2] != (frame.height, frame.width):
        raise DecodeError(
            f"decoded image is {bgr.shape[1]}x{bgr.shape[0]}, headers say "
            f"{frame.width}x{frame.height}",
            reason="size_mismatch",
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse images whose sides or pixel count fall outside the limits (before decoding).

    Raises:
        FrameError: ``image_too_small`` or ``image_too_large``.
    """
    if min(width, height) < limits.min_side:
        raise FrameError(
            f"image {width}x{height} is smaller than {limits.min_side} px", reason="image_too_small"
        )
    if max(width, height) > limits.max_side:
        raise FrameError(
            f"image {width}x{height} is larger than {limits.max_side} px", reason="image_too_large"
        )
    if width * height > limits.max_pixels:
        raise FrameError(
            f"image {width}x{height} has more than {limits.max_pixels} pixels",
            reason="image_too_large",
        )


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """Map a normalised heatmap to the published scale: 0 -> 0, 0.5 -> 127, >= 1 -> 255.

    Args:
        heatmap: ``[S, S]`` float, normalised (0.5 = the model's threshold).

    Returns:
        ``[S, S]`` uint8.
    """
    return np.floor(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_heatmap_png(heatmap: np.ndarray, compression: int = 1) -> bytes:
    """Encode a normalised heatmap as the published PNG (fast compression by default).

    Args:
        heatmap: ``[S, S]`` float, normalised (0.5 = the model's threshold).
        compression: PNG compression level 0-9.

    Returns:
        PNG bytes of the uint8 heatmap (:func:`heatmap_to_uint8`).
    """
    ok, buffer = cv2.imencode(".png", heatmap_to_uint8(heatmap),
                              [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError("OpenCV could not encode the heatmap as PNG")
    return buffer.tobytes()
