"""Dead-letter schema: a refused record keeps its key, bytes and headers, plus why and where.

A dead letter is the original record re-published to the dead-letter topic with the
``lw-dlq-*`` headers below added (earlier ``lw-dlq-*`` headers are replaced, so a letter
that is replayed and refused again carries only its latest reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.wire.messages import ConsumedRecord, Headers

HEADER_DLQ_PREFIX = "lw-dlq-"
HEADER_DLQ_REASON = "lw-dlq-reason"
HEADER_DLQ_DETAIL = "lw-dlq-detail"
HEADER_DLQ_TOPIC = "lw-dlq-topic"
HEADER_DLQ_PARTITION = "lw-dlq-partition"
HEADER_DLQ_OFFSET = "lw-dlq-offset"
HEADER_DLQ_WORKER = "lw-dlq-worker"

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

    def original_headers(self) -> Headers:
        """The headers the frame was first published with."""
        return [(k, v) for k, v in self.headers if not k.startswith(HEADER_DLQ_PREFIX)]
