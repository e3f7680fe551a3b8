import json

import cv2
import numpy as np
import pytest

from pipeline.errors import DecodeError, FrameError, SchemaError
from pipeline.wire.codec import ImageLimits, decode_frame, encode_image
from pipeline.wire.messages import (
    HEADER_SCHEMA,
    Encoding,
    FrameMessage,
    ResultMessage,
    Timings,
)
from tests.twins import make_frame


def _gradient(h: int = 24, w: int = 40) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, w)[None, :]
    image[..., 1] = np.linspace(0, 255, h)[:, None]
    image[..., 2] = 90
    return image


def test_frame_round_trips_through_kafka_record_form():
    frame = make_frame("cam-1", "line-a", 7)
    parsed = FrameMessage.from_record(frame.key, frame.headers(), frame.payload)
    assert parsed == frame
    assert frame.key == b"cam-1"


@pytest.mark.parametrize("encoding", [Encoding.JPEG, Encoding.RAW])
def test_codec_round_trip_keeps_rgb_order_and_size(encoding):
    image = _gradient()
    payload = encode_image(image, encoding, jpeg_quality=98)
    frame = FrameMessage("c", "l", "f1", 1.0, encoding, 40, 24, payload)
    decoded = decode_frame(frame, ImageLimits())
    assert decoded.shape == (24, 40, 3)
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3.0
    # red grows to the right, green grows downwards: channels not swapped
    assert decoded[12, 39, 0] > decoded[12, 0, 0] + 200
    assert decoded[23, 20, 1] > decoded[0, 20, 1] + 200


def _headers(frame, drop=None, **replace):
    out = []
    for name, value in frame.headers():
        if name == drop:
            continue
        out.append((name, replace.get(name.replace("-", "_"), value)))
    return out


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: ([], f.payload), "missing_headers"),
        (lambda f: (_headers(f, lw_schema=b"9"), f.payload), "unknown_schema_version"),
        (lambda f: (_headers(f, lw_schema=b"one"), f.payload), "invalid_headers"),
        (lambda f: (_headers(f, drop="lw-width"), f.payload), "missing_headers"),
        (lambda f: (_headers(f, lw_encoding=b"gif"), f.payload), "invalid_headers"),
        (lambda f: (_headers(f, lw_camera=b"../etc"), f.payload), "invalid_headers"),
        (lambda f: (_headers(f, lw_capture_ts=b"nan"), f.payload), "invalid_headers"),
        (lambda f: ([*f.headers(), (HEADER_SCHEMA, b"1")], f.payload), "invalid_headers"),
        (lambda f: (_headers(f, lw_line=b"\xff\xfe"), f.payload), "invalid_headers"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(mutate, reason):
    frame = make_frame("cam", "line", 1)
    headers, payload = mutate(frame)
    with pytest.raises(SchemaError) as caught:
        FrameMessage.from_record(frame.key, headers, payload)
    assert caught.value.reason == reason


def test_key_must_match_camera_header():
    frame = make_frame("cam", "line", 1)
    with pytest.raises(SchemaError) as caught:
        FrameMessage.from_record(b"other", frame.headers(), frame.payload)
    assert caught.value.reason == "key_mismatch"


@pytest.mark.parametrize(
    ("payload", "width", "height", "encoding", "reason"),
    [
        (b"", 32, 32, Encoding.JPEG, "empty_payload"),
        (b"\xff\xd8garbage" * 10, 32, 32, Encoding.JPEG, "undecodable_payload"),
        (b"x" * 100, 32, 32, Encoding.RAW, "size_mismatch"),
        (None, 33, 32, Encoding.JPEG, "size_mismatch"),
        (None, 8, 8, Encoding.JPEG, "image_too_small"),
        (None, 5000, 32, Encoding.JPEG, "image_too_large"),
    ],
)
def test_decode_refuses_bad_payloads(payload, width, height, encoding, reason):
    if payload is None:
        payload = make_frame("c", "l", 1).payload  # a valid 32x32 JPEG
    frame = FrameMessage("c", "l", "f", 1.0, encoding, width, height, payload)
    with pytest.raises(FrameError) as caught:
        decode_frame(frame, ImageLimits(min_side=16, max_side=4096))
    assert caught.value.reason == reason
    if reason in ("empty_payload", "undecodable_payload", "size_mismatch"):
        assert isinstance(caught.value, DecodeError)


def test_oversize_payload_is_refused():
    frame = make_frame("c", "l", 1)
    with pytest.raises(FrameError) as caught:
        decode_frame(frame, ImageLimits(max_payload_bytes=len(frame.payload) - 1))
    assert caught.value.reason == "message_too_large"


def test_result_json_round_trip_and_version_check():
    result = ResultMessage("f1", "cam", "line", 1.5, 0.7, 0.61, True, "v3",
                           Timings(1.0, 2.0, 3.0, 8), stored_ts=2.0, worker_id="w")
    assert ResultMessage.from_json(result.to_json()) == result
    data = json.loads(result.to_json())
    data["schema_version"] = 99
    with pytest.raises(SchemaError):
        ResultMessage.from_json(json.dumps(data))


def test_published_heatmap_png_scale():
    from pipeline.wire.codec import encode_heatmap_png, heatmap_to_uint8

    values = np.array([[-0.5, 0.0, 0.5, 1.0, 3.0]], np.float32)
    assert heatmap_to_uint8(values).tolist() == [[0, 0, 127, 255, 255]]
    png = encode_heatmap_png(np.tile(values, (4, 1)))
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.startswith(b"\x89PNG") and decoded.dtype == np.uint8 and decoded.ndim == 2
    assert decoded[0].tolist() == [0, 0, 127, 255, 255]
