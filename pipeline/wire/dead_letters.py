"""Dead-letter schema: a refused record keeps its key, bytes and headers, plus why and where.

A dead letter is the original record re-published to the dead-letter topic with the
``lw-dlq-*`` headers below added (earlier ``lw-dlq-*`` headers are replaced, so a letter
that is replayed and refused again carries only its latest reason).

A dead letter always fits the dead-letter topic: when the original bytes plus the added
headers would exceed the record limit, the letter carries no payload but its SHA-256
digest and size (``lw-dlq-payload-sha256``, ``lw-dlq-payload-bytes``); the original stays
in the frames topic at the recorded origin offset until retention.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.wire.messages import ConsumedRecord, Headers

HEADER_DLQ_PREFIX = "lw-dlq-"
HEADER_DLQ_REASON = "lw-dlq-reason"
HEADER_DLQ_DETAIL = "lw-dlq-detail"
HEADER_DLQ_TOPIC = "lw-dlq-topic"
HEADER_DLQ_PARTITION = "lw-dlq-partition"
HEADER_DLQ_OFFSET = "lw-dlq-offset"
HEADER_DLQ_WORKER = "lw-dlq-worker"
HEADER_DLQ_PAYLOAD_SHA256 = "lw-dlq-payload-sha256"
HEADER_DLQ_PAYLOAD_BYTES = "lw-dlq-payload-bytes"

#: Room kept for the record batch's own framing when checking that a letter fits.
RECORD_OVERHEAD_BYTES = 1024

#: Headers longer than this are cut (a letter's headers must fit whatever the record had).
MAX_HEADER_VALUE_BYTES = 4096

#: Longest detail text kept (bytes after UTF-8 encoding may be a little more).
MAX_DETAIL_CHARS = 500


def dead_letter_headers(record: ConsumedRecord, reason: str, detail: str,
                        worker_id: str) -> Headers:
    """Original headers plus the dead-letter reason and origin."""
    return [
        *[(k, v) for k, v in record.headers if not k.startswith(HEADER_DLQ_PREFIX)],
        (HEADER_DLQ_REASON, reason.encode()),
        (HEADER_DLQ_DETAIL, detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
        (HEADER_DLQ_TOPIC, record.topic.encode()),
        (HEADER_DLQ_PARTITION, str(record.partition).encode()),
        (HEADER_DLQ_OFFSET, str(record.offset).encode()),
        (HEADER_DLQ_WORKER, worker_id.encode()),
    ]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """A record's size as the record limit sees it (a small allowance for framing)."""
    return (len(key or b"") + len(value or b"") + RECORD_OVERHEAD_BYTES
            + sum(len(k.encode()) + len(v or b"") for k, v in headers))


def dead_letter_record(record: ConsumedRecord, reason: str, detail: str, worker_id: str,
                       max_message_bytes: int) -> tuple[bytes | None, bytes | None, Headers]:
    """The (key, value, headers) of a dead letter that fits ``max_message_bytes``.

    The payload is kept when everything fits; otherwise (or when even the headers are
    too large) it is replaced by its digest and size, and over-long header values are cut.
    """
    headers = dead_letter_headers(record, reason, detail, worker_id)
    if record_size(record.key, record.value, headers) <= max_message_bytes:
        return record.key, record.value, headers
    return strip_payload(record.key, record.value, headers, max_message_bytes)


def strip_payload(key: bytes | None, value: bytes | None, headers: Headers,
                  max_message_bytes: int) -> tuple[bytes | None, bytes | None, Headers]:
    """A letter without its payload: digest and size instead, over-long headers cut."""
    payload = value or b""
    kept = [(k, v if v is None or len(v) <= MAX_HEADER_VALUE_BYTES else v[:MAX_HEADER_VALUE_BYTES])
            for k, v in headers if k not in (HEADER_DLQ_PAYLOAD_SHA256, HEADER_DLQ_PAYLOAD_BYTES)]
    kept += [(HEADER_DLQ_PAYLOAD_SHA256, hashlib.sha256(payload).hexdigest().encode()),
             (HEADER_DLQ_PAYLOAD_BYTES, str(len(payload)).encode())]
    if key is not None and len(key) > MAX_HEADER_VALUE_BYTES:
        key = key[:MAX_HEADER_VALUE_BYTES]
    while kept and record_size(key, None, kept) > max_message_bytes:
        # absurd header counts: keep the dead-letter headers (last), drop originals
        kept.pop(0)
    return key, None, kept


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic.

    Attributes:
        partition: Dead-letter topic partition.
        offset: Offset in the dead-letter topic.
        key: Original key.
        value: Original bytes.
        headers: Original headers plus the ``lw-dlq-*`` ones.
    """

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str:
        """A header as text ('' when absent)."""
        for key, value in self.headers:
            if key == name and value is not None:
                return value.decode("utf-8", "replace")
        return ""

    @property
    def reason(self) -> str:
        """Why the worker refused it."""
        return self.header(HEADER_DLQ_REASON)

    @property
    def payload_stripped(self) -> bool:
        """Whether the letter was too large to carry its payload (digest and size only)."""
        return any(k == HEADER_DLQ_PAYLOAD_SHA256 for k, _ in self.headers)

    def original_headers(self) -> Headers:
        """The headers the frame was first published with."""
        return [(k, v) for k, v in self.headers if not k.startswith(HEADER_DLQ_PREFIX)]
