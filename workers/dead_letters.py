"""Dead-letter tool: list the frames workers could not process, and replay them.

``python -m workers.dead_letters list`` prints one line per dead letter (dead-letter
offset, reason, origin topic/partition/offset, camera, line, frame id, detail).
``python -m workers.dead_letters replay`` re-publishes the original key, bytes and
headers (without the ``lw-dlq-*`` ones) to the frames topic, for example after a model for
an unknown product line was added. Filters: ``--reason``, ``--line``, ``--camera``,
``--from-offset``. Replaying is safe: a frame that already has a result is overwritten,
never duplicated.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline.errors import LinewatchError, TransportUnavailableError
from pipeline.kafka_io import (
    HEADER_DLQ_DETAIL,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_REASON,
    HEADER_DLQ_TOPIC,
    KafkaRecordSink,
    require_topics,
)
from pipeline.messages import HEADER_CAMERA, HEADER_FRAME_ID, HEADER_LINE, Headers
from pipeline.process import configure_logging, load_settings
from pipeline.settings import DeadLetterSettings, KafkaSettings

logger = logging.getLogger(__name__)


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
        """A header as text ('' when absent or not UTF-8)."""
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
        return [(k, v) for k, v in self.headers if not k.startswith("lw-dlq-")]

    def describe(self) -> str:
        """One line for ``list``."""
        return (f"{self.partition}:{self.offset}\t{self.reason}\t"
                f"{self.header(HEADER_DLQ_TOPIC)}/{self.header(HEADER_DLQ_PARTITION)}"
                f"@{self.header(HEADER_DLQ_OFFSET)}\tcamera={self.header(HEADER_CAMERA) or '-'}"
                f"\tline={self.header(HEADER_LINE) or '-'}"
                f"\tframe={self.header(HEADER_FRAME_ID) or '-'}"
                f"\t{len(self.value or b'')} bytes\t{self.header(HEADER_DLQ_DETAIL)}")


def read_dead_letters(kafka: KafkaSettings, from_offset: int = 0,
                      idle_timeout_ms: int = 2000) -> Iterator[DeadLetter]:
    """Read the dead-letter topic from ``from_offset`` until it stays quiet (no group).

    Raises:
        ConfigurationError: The topic does not exist.
        TransportUnavailableError: The broker cannot be reached.
    """
    require_topics(kafka, [kafka.dead_letter_topic])
    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False,
                             consumer_timeout_ms=idle_timeout_ms, fetch_max_wait_ms=100,
                             allow_auto_create_topics=False)
    try:
        partitions = [TopicPartition(kafka.dead_letter_topic, p)
                      for p in sorted(consumer.partitions_for_topic(kafka.dead_letter_topic))]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, max(from_offset, 0))
        # read until the topic stays quiet for idle_timeout_ms (end offsets are not
        # trusted: some Kafka-protocol brokers report them off by one)
        while True:
            batches = consumer.poll(timeout_ms=idle_timeout_ms)
            if not batches:
                break
            for _, messages in sorted(batches.items(), key=lambda kv: kv[0].partition):
                for m in messages:
                    yield DeadLetter(m.partition, m.offset, m.key, m.value,
                                     [(k, v) for k, v in (m.headers or [])])
    except KafkaError as error:
        raise TransportUnavailableError(f"reading dead letters failed: {error}") from error
    finally:
        consumer.close(autocommit=False)


def select(letters: Iterator[DeadLetter], reason: str | None = None, line: str | None = None,
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
    """
    require_topics(kafka, [kafka.frames_topic])
    with KafkaRecordSink(kafka, max_request_size=64 * 1024 * 1024) as sink:
        sink.send_all(kafka.frames_topic,
                      [(d.key, d.value, d.original_headers()) for d in letters], timeout_s)
    return len(letters)


def main(argv: Sequence[str] | None = None) -> int:
    """``list`` or ``replay`` dead letters (settings from ``LINEWATCH_KAFKA__*``)."""
    parser = argparse.ArgumentParser(description="List or replay dead-lettered frames.")
    parser.add_argument("command", choices=["list", "replay"])
    parser.add_argument("--reason", help="only this reason, e.g. unknown_product_line")
    parser.add_argument("--line", help="only frames of this product line")
    parser.add_argument("--camera", help="only frames of this camera")
    parser.add_argument("--from-offset", type=int, default=0,
                        help="start at this dead-letter offset (skip what was replayed)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    settings = load_settings(DeadLetterSettings, "linewatch-dead-letters")
    if settings is None:
        return 2
    try:
        letters = list(select(read_dead_letters(settings.kafka, args.from_offset,
                                                settings.read_timeout_ms),
                              args.reason, args.line, args.camera))
        if args.command == "list":
            for letter in letters:
                print(letter.describe())
            print(f"{len(letters)} dead letter(s)")
            return 0
        count = replay(settings.kafka, letters)
    except LinewatchError as error:
        print(f"linewatch-dead-letters: {error}", file=sys.stderr)
        return 1
    last = max((d.offset for d in letters), default=None)
    print(f"replayed {count} dead letter(s) to {settings.kafka.frames_topic}"
          + (f"; next time use --from-offset {last + 1}" if last is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
