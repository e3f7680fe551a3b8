"""Listing and replaying dead letters (the reader is :mod:`pipeline.kafka.dead_letters`).

``python -m workers.dead_letters list`` prints one line per dead letter (dead-letter
offset, reason, origin topic/partition/offset, camera, line, frame id, detail).
``python -m workers.dead_letters replay`` re-publishes the original key, bytes and
headers (without the ``lw-dlq-*`` ones) to the frames topic, for example after a model for
an unknown product line was added. Filters: ``--reason``, ``--line``, ``--camera``,
``--from-offset``. Replaying is safe: a frame that already has a result is overwritten,
never duplicated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from pipeline.errors import ConfigurationError
from pipeline.kafka.admin import require_topics
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.settings import KafkaSettings
from pipeline.wire.dead_letters import (
    HEADER_DLQ_DETAIL,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_PAYLOAD_BYTES,
    HEADER_DLQ_TOPIC,
    DeadLetter,
)
from pipeline.wire.messages import HEADER_CAMERA, HEADER_FRAME_ID, HEADER_LINE


def describe(letter: DeadLetter) -> str:
    """One line of ``list``: offset, reason, origin, camera, line, frame, size, detail."""
    return (f"{letter.partition}:{letter.offset}\t{letter.reason}\t"
            f"{letter.header(HEADER_DLQ_TOPIC)}/{letter.header(HEADER_DLQ_PARTITION)}"
            f"@{letter.header(HEADER_DLQ_OFFSET)}\tcamera={letter.header(HEADER_CAMERA) or '-'}"
            f"\tline={letter.header(HEADER_LINE) or '-'}"
            f"\tframe={letter.header(HEADER_FRAME_ID) or '-'}"
            f"\t{_size(letter)}\t{letter.header(HEADER_DLQ_DETAIL)}")


def _size(letter: DeadLetter) -> str:
    if letter.payload_stripped:
        return f"{letter.header(HEADER_DLQ_PAYLOAD_BYTES)} bytes (payload not kept)"
    return f"{len(letter.value or b'')} bytes"


def select(letters: Iterable[DeadLetter], reason: str | None = None, line: str | None = None,
           camera: str | None = None) -> Iterator[DeadLetter]:
    """Keep the letters that match every given filter."""
    for letter in letters:
        if reason and letter.reason != reason:
            continue
        if line and letter.header(HEADER_LINE) != line:
            continue
        if camera and letter.header(HEADER_CAMERA) != camera:
            continue
        yield letter


def replay(kafka: KafkaSettings, letters: Sequence[DeadLetter], timeout_s: float = 30.0) -> int:
    """Publish the letters' original key, bytes and headers to the frames topic.

    Returns:
        Letters replayed (all acknowledged by the broker).

    Raises:
        TransportUnavailableError: Not all were acknowledged.
        ConfigurationError: Some letters carry no payload (they were too large for the
            dead-letter topic); nothing is replayed. Their originals are in the frames
            topic at the offsets ``list`` shows; filter them out or re-send the originals.
    """
    stripped = [d for d in letters if d.payload_stripped]
    if stripped:
        where = ", ".join(f"{d.header(HEADER_DLQ_TOPIC)}/{d.header(HEADER_DLQ_PARTITION)}"
                          f"@{d.header(HEADER_DLQ_OFFSET)}" for d in stripped[:5])
        raise ConfigurationError(
            f"{len(stripped)} dead letter(s) carry no payload (too large for the dead-letter "
            f"topic; the originals are at {where}{', ...' if len(stripped) > 5 else ''}); "
            "nothing replayed: narrow the selection (--reason, --from-offset) to letters "
            "with payloads")
    require_topics(kafka, [kafka.frames_topic])
    with KafkaRecordSink(kafka) as sink:
        sink.send_all(kafka.frames_topic,
                      [(d.key, d.value, d.original_headers()) for d in letters], timeout_s)
    return len(letters)
