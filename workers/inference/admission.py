"""Admission: one raw record becomes an admitted frame or a dead letter, never a crash.

Whatever a record holds (malformed headers, a lying image header, bytes that make a
library raise something unexpected), :func:`admit` returns either an :class:`Admitted`
frame or a :class:`~pipeline.errors.FrameError` whose reason names what was wrong; the
batch goes on. An exception nobody expected becomes the reason
``internal_error:<ExceptionType>`` (logged with its traceback), so a poison pill is
dead-lettered instead of crash-looping the worker. Only configuration errors, which no
record can cause, stop the process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from pipeline.errors import FrameError, SchemaError
from pipeline.wire.codec import ImageLimits, decode_frame
from pipeline.wire.messages import ConsumedRecord, FrameMessage

logger = logging.getLogger(__name__)

#: Characters of the payload's SHA-256 kept as its content digest.
DIGEST_CHARS = 32


@dataclass(frozen=True, slots=True)
class CaptureWindow:
    """Capture times a worker accepts, relative to its own clock.

    Attributes:
        max_age_s: Oldest accepted capture, seconds before now.
        max_lead_s: Newest accepted capture, seconds after now (clock skew).
    """

    max_age_s: float = 7 * 24 * 3600.0
    max_lead_s: float = 300.0

    def check(self, capture_ts: float, now: float) -> None:
        """Refuse a capture time outside the window.

        Raises:
            SchemaError: ``capture_time_out_of_window``.
        """
        if not (math.isfinite(capture_ts)
                and now - self.max_age_s <= capture_ts <= now + self.max_lead_s):
            raise SchemaError(
                f"capture time {capture_ts!r} is outside [now - {self.max_age_s:g}s, "
                f"now + {self.max_lead_s:g}s] (now {now:.3f})",
                reason="capture_time_out_of_window")


@dataclass(frozen=True, slots=True)
class Admitted:
    """A record that passed every check, decoded.

    Attributes:
        record: The record.
        frame: Its parsed frame message.
        image: HxWx3 uint8 RGB.
        digest: Content digest of the payload (:data:`DIGEST_CHARS` hex characters).
        decode_ms: Time spent parsing, checking and decoding.
    """

    record: ConsumedRecord
    frame: FrameMessage
    image: np.ndarray
    digest: str
    decode_ms: float


def admit(record: ConsumedRecord, limits: ImageLimits, window: CaptureWindow,
          now: float | None = None) -> Admitted | FrameError:
    """Parse, check and decode one record; never raises.

    Args:
        record: The raw record.
        limits: Accepted sizes.
        window: Accepted capture times.
        now: The current time (default ``time.time()``).

    Returns:
        The admitted frame, or the error that sends the record to the dead-letter topic.
    """
    started = time.perf_counter()
    try:
        size = len(record.value or b"")
        if size > limits.max_payload_bytes:
            raise FrameError(f"message of {size} bytes exceeds {limits.max_payload_bytes}",
                             reason="message_too_large")
        frame = FrameMessage.from_record(record.key, record.headers, record.value)
        window.check(frame.capture_ts, time.time() if now is None else now)
        image = decode_frame(frame, limits)
        digest = hashlib.sha256(frame.payload).hexdigest()[:DIGEST_CHARS]
    except FrameError as error:
        return error
    except Exception as error:
        name = type(error).__name__
        logger.exception("record %s/%d@%d raised %s while being admitted", record.topic,
                         record.partition, record.offset, name)
        return FrameError(f"unexpected {name}: {str(error)[:300]}",
                          reason=f"internal_error:{name}")
    return Admitted(record, frame, image, digest, (time.perf_counter() - started) * 1000.0)
