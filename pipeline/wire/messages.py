"""Versioned, typed message schemas: what crosses Kafka and Redis.

A frame travels as one Kafka record: key = camera id (so one camera's frames stay in
order on one partition), value = the encoded image, headers = the typed metadata below
(``lw-schema`` first). Keeping the metadata in headers lets a worker reject a bad record
before touching its payload, and keeps the payload bytes unwrapped (no base64).

A result is JSON (:class:`ResultMessage`) stored in Redis with its heatmap and frame
(:class:`StoredResult`); a model promotion or rollback is announced as a JSON
:class:`ModelEvent` on Redis pub/sub. :class:`ConsumedRecord` is a transport-neutral view of
one record as read from Kafka (what the worker and the dead-letter headers work on).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from enum import StrEnum
from typing import Any

from pipeline.errors import SchemaError

FRAME_SCHEMA_VERSION = 1
RESULT_SCHEMA_VERSION = 1

#: Camera ids, product lines and frame ids become parts of Redis keys: keep them tame.
#: Always matched whole (``fullmatch``): ``$`` alone would let a trailing newline through.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

HEADER_SCHEMA = "lw-schema"
HEADER_CAMERA = "lw-camera"
HEADER_LINE = "lw-line"
HEADER_FRAME_ID = "lw-frame-id"
HEADER_CAPTURE_TS = "lw-capture-ts"
HEADER_ENCODING = "lw-encoding"
HEADER_WIDTH = "lw-width"
HEADER_HEIGHT = "lw-height"

Headers = list[tuple[str, bytes]]


class Encoding(StrEnum):
    """How a frame's payload is encoded."""

    JPEG = "jpeg"
    RAW = "raw"  # HxWx3 uint8 RGB, row-major, no header


def validate_id(value: str, what: str) -> str:
    """Check that an identifier is safe to use inside a Redis key.

    Args:
        value: The identifier.
        what: Its name, for the error message.

    Returns:
        The identifier unchanged.

    Raises:
        SchemaError: If it is empty, too long or has characters outside ``[A-Za-z0-9._-]``.
    """
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise SchemaError(
            f"{what} {value!r} is not 1-128 characters of [A-Za-z0-9._-] starting alphanumeric",
            reason="invalid_headers",
        )
    return value


def is_valid_id(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_id` (for input that may be anything)."""
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """One record as read from Kafka (transport-neutral view).

    Attributes:
        topic: Topic.
        partition: Partition.
        offset: Offset.
        key: Key bytes.
        value: Value bytes.
        headers: Headers.
        received_monotonic: When this process received it (``time.monotonic()``).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    received_monotonic: float


@dataclass(frozen=True, slots=True)
class FrameMessage:
    """One captured frame, as produced by a camera producer.

    Attributes:
        camera_id: Camera that captured the frame (also the Kafka key).
        product_line: Product line whose model judges the frame.
        frame_id: Unique per camera; sorts in capture order within one producer run.
        capture_ts: Capture time, seconds since the Unix epoch.
        encoding: Payload encoding.
        width: Image width in pixels.
        height: Image height in pixels.
        payload: Encoded image bytes.
        schema_version: Frame schema version.
    """

    camera_id: str
    product_line: str
    frame_id: str
    capture_ts: float
    encoding: Encoding
    width: int
    height: int
    payload: bytes
    schema_version: int = FRAME_SCHEMA_VERSION

    def __post_init__(self) -> None:
        validate_id(self.camera_id, "camera id")
        validate_id(self.product_line, "product line")
        validate_id(self.frame_id, "frame id")
        if not math.isfinite(self.capture_ts) or self.capture_ts < 0:
            raise SchemaError(f"capture timestamp {self.capture_ts!r} is not a valid time")
        if self.width <= 0 or self.height <= 0:
            raise SchemaError(f"image size {self.width}x{self.height} is not positive")

    @property
    def key(self) -> bytes:
        """Kafka record key: the camera id."""
        return self.camera_id.encode()

    def headers(self) -> Headers:
        """Kafka record headers carrying the metadata (schema version first)."""
        return [
            (HEADER_SCHEMA, str(self.schema_version).encode()),
            (HEADER_CAMERA, self.camera_id.encode()),
            (HEADER_LINE, self.product_line.encode()),
            (HEADER_FRAME_ID, self.frame_id.encode()),
            (HEADER_CAPTURE_TS, repr(float(self.capture_ts)).encode()),
            (HEADER_ENCODING, self.encoding.value.encode()),
            (HEADER_WIDTH, str(self.width).encode()),
            (HEADER_HEIGHT, str(self.height).encode()),
        ]

    @classmethod
    def from_record(
        cls,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        value: bytes | None,
    ) -> FrameMessage:
        """Parse a Kafka record into a frame message.

        Args:
            key: Record key (must equal the camera header when present).
            headers: Record headers.
            value: Record value (the payload; may be empty, the codec rejects that).

        Returns:
            The typed frame message.

        Raises:
            SchemaError: On absent, duplicated or malformed headers, an unknown schema
                version, or a key that disagrees with the camera header.
        """
        fields = _header_dict(headers)
        version_text = fields.get(HEADER_SCHEMA)
        if version_text is None:
            raise SchemaError(f"header {HEADER_SCHEMA!r} is missing", reason="missing_headers")
        try:
            version = int(version_text)
        except ValueError:
            raise SchemaError(f"schema version {version_text!r} is not an integer") from None
        if version != FRAME_SCHEMA_VERSION:
            raise SchemaError(
                f"frame schema version {version} is unknown (this worker reads "
                f"{FRAME_SCHEMA_VERSION})",
                reason="unknown_schema_version",
            )
        required = (
            HEADER_CAMERA,
            HEADER_LINE,
            HEADER_FRAME_ID,
            HEADER_CAPTURE_TS,
            HEADER_ENCODING,
            HEADER_WIDTH,
            HEADER_HEIGHT,
        )
        missing = [name for name in required if name not in fields]
        if missing:
            raise SchemaError(f"headers {missing} are missing", reason="missing_headers")
        try:
            encoding = Encoding(fields[HEADER_ENCODING])
        except ValueError:
            raise SchemaError(f"encoding {fields[HEADER_ENCODING]!r} is unknown") from None
        try:
            width = int(fields[HEADER_WIDTH])
            height = int(fields[HEADER_HEIGHT])
            capture_ts = float(fields[HEADER_CAPTURE_TS])
        except ValueError as error:
            raise SchemaError(f"numeric header is malformed: {error}") from None
        message = cls(
            camera_id=fields[HEADER_CAMERA],
            product_line=fields[HEADER_LINE],
            frame_id=fields[HEADER_FRAME_ID],
            capture_ts=capture_ts,
            encoding=encoding,
            width=width,
            height=height,
            payload=value or b"",
            schema_version=version,
        )
        if key is not None and key != message.key:
            raise SchemaError(
                f"record key {key!r} differs from camera header {message.camera_id!r}",
                reason="key_mismatch",
            )
        return message


def _header_dict(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Decode ``lw-*`` headers into text, refusing duplicates and non-UTF-8 values."""
    fields: dict[str, str] = {}
    for name, raw in headers or ():
        if not name.startswith("lw-") or name.startswith("lw-dlq-"):
            continue
        if name in fields:
            raise SchemaError(f"header {name!r} appears twice")
        if raw is None:
            raise SchemaError(f"header {name!r} has no value")
        try:
            fields[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaError(f"header {name!r} is not UTF-8") from None
    return fields


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a frame's time went, in milliseconds (and the batch it ran in).

    Attributes:
        queue_ms: From capture to the start of its batch (transport + batching wait).
        decode_ms: Decoding its payload.
        infer_ms: The model call of its batch (shared by the batch).
        batch_size: Frames in the model call.
    """

    queue_ms: float
    decode_ms: float
    infer_ms: float
    batch_size: int


@dataclass(frozen=True, slots=True)
class ResultMessage:
    """The verdict on one frame, stored in Redis as JSON.

    Attributes:
        frame_id: Frame id (unique per camera).
        camera_id: Camera id.
        product_line: Product line.
        capture_ts: Capture time, seconds since the Unix epoch.
        image_score: Raw image score of the model.
        normalized_score: Score on the calibrated scale (0.5 = threshold).
        label: True when the frame is judged anomalous.
        model_version: Version of the model that judged it.
        timings: Per-stage timings.
        stored_ts: When the worker wrote the result, seconds since the Unix epoch.
        worker_id: Which worker judged it.
        content_digest: SHA-256 (hex, first 32 characters) of the frame's payload: a
            frame id reused for different content is stored as a new frame
            (:func:`reused_frame_id`), the same content again is a replay.
        schema_version: Result schema version.
    """

    frame_id: str
    camera_id: str
    product_line: str
    capture_ts: float
    image_score: float
    normalized_score: float
    label: bool
    model_version: str
    timings: Timings
    stored_ts: float = 0.0
    worker_id: str = ""
    content_digest: str = ""
    schema_version: int = field(default=RESULT_SCHEMA_VERSION)

    def to_json(self) -> str:
        """Serialise to compact JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ResultMessage:
        """Parse a stored result.

        Raises:
            SchemaError: If the JSON is malformed or of an unknown schema version.
        """
        try:
            data: dict[str, Any] = json.loads(text)
            if data.get("schema_version") != RESULT_SCHEMA_VERSION:
                raise SchemaError(
                    f"result schema version {data.get('schema_version')!r} is unknown",
                    reason="unknown_schema_version",
                )
            timings = Timings(**data.pop("timings"))
            known = {f.name for f in dataclass_fields(cls)}  # fields added later are ignored
            return cls(timings=timings, **{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, KeyError) as error:
            raise SchemaError(f"result JSON is malformed: {error}") from None


def reused_frame_id(frame_id: str, content_digest: str) -> str:
    """The id under which a reused frame id's different content is stored.

    ``<frame id>.<first 12 digest characters>`` (the frame id cut so the whole stays a
    valid id): a camera that restarts its frame counter never hides a new frame as a
    replay of an old one.
    """
    return f"{frame_id[:115]}.{content_digest[:12]}"


@dataclass(frozen=True, slots=True)
class StoredResult:
    """Everything the worker stores for one frame.

    Attributes:
        result: The result message.
        heatmap_png: PNG of the uint8 heatmap (``pipeline.wire.codec``; empty to skip).
        frame_jpeg: The frame's JPEG (may be empty to skip).
    """

    result: ResultMessage
    heatmap_png: bytes = b""
    frame_jpeg: bytes = b""


MODEL_EVENTS = ("promoted", "rolled_back")


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """A line's ``current`` model pointer moved (published after the move).

    Attributes:
        line: Product line.
        version: Version the pointer now names.
        event: ``promoted`` or ``rolled_back``.
        previous: Version it named before ('' when none).
        ts: Unix time of the move.
    """

    line: str
    version: str
    event: str
    previous: str = ""
    ts: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """The wire form (JSON object)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelEvent:
        """Parse and validate an event.

        Raises:
            ValueError: Not a model event.
        """
        try:
            data = json.loads(text)
            event = cls(line=validate_id(str(data["line"]), "product line"),
                        version=str(data["version"]), event=str(data["event"]),
                        previous=str(data.get("previous", "")), ts=float(data.get("ts", 0)))
        except (KeyError, TypeError, ValueError, SchemaError) as error:
            raise ValueError(f"not a model event: {error}") from None
        if event.event not in MODEL_EVENTS:
            raise ValueError(f"unknown model event {event.event!r}")
        return event
