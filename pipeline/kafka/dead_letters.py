"""Dead letters on Kafka: the sink that never loses one, and the reader of the topic.

The header schema is :mod:`pipeline.wire.dead_letters`; listing and replaying is the
``python -m workers.dead_letters`` tool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.kafka.admin import PERMANENT_ERRORS, require_topics
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.settings import KafkaSettings
from pipeline.wire.dead_letters import (
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_PAYLOAD_SHA256,
    HEADER_DLQ_REASON,
    HEADER_DLQ_TOPIC,
    DeadLetter,
    dead_letter_record,
    strip_payload,
)
from pipeline.wire.messages import ConsumedRecord, Headers

logger = logging.getLogger(__name__)


#: The broker (or the client's own size check) refused the record as too large.
_TOO_LARGE: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass
class _Letter:
    key: bytes | None
    value: bytes | None
    headers: Headers
    future: Any = None
    error: BaseException | None = None  # a refusal seen at send time

    @property
    def stripped(self) -> bool:
        return any(k == HEADER_DLQ_PAYLOAD_SHA256 for k, _ in self.headers)


class KafkaDeadLetterSink:
    """Sends unprocessable records to the dead-letter topic; never blocks a partition.

    Each dead letter keeps the original key, headers and (when it fits the record limit)
    bytes, and adds the reason, a detail and the origin (topic/partition/offset). A letter
    stays pending until the broker acknowledged it: :meth:`flush` waits for every pending
    letter and sends again the ones that failed transiently (through a fresh producer),
    raising :class:`TransportUnavailableError` until all are acknowledged, so the worker
    commits a batch's offsets only after its dead letters are safe.

    A letter refused as too large is sent once more without its payload (digest and size
    instead); refused again, it is logged with its origin and counted (``on_dropped``),
    and the batch goes on: the original record stays in the frames topic until retention.

    Args:
        sink: Record sink.
        topic: Dead-letter topic.
        worker_id: Recorded in each dead letter.
        max_message_bytes: The record limit (``KafkaSettings.max_message_bytes``).
        on_dropped: Called with the reason of each letter that could not be sent at all.
    """

    def __init__(self, sink: KafkaRecordSink, topic: str, worker_id: str,
                 max_message_bytes: int = 8 * 1024 * 1024,
                 on_dropped: Callable[[str], None] | None = None) -> None:
        self._sink = sink
        self._topic = topic
        self._worker_id = worker_id
        self._max_bytes = max_message_bytes
        self._on_dropped = on_dropped
        self._pending: list[_Letter] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def _send(self, letter: _Letter) -> _Letter:
        letter.future, letter.error = None, None
        try:
            letter.future = self._sink.send(self._topic, letter.key, letter.value,
                                            letter.headers)
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the dead letter: {error}") from error
        except _TOO_LARGE as error:
            letter.error = error
        except (KafkaError, TransportUnavailableError) as error:
            logger.warning("dead letter not sent yet (%s); flush retries it", error)
        return letter

    def dead_letter(self, record: ConsumedRecord, reason: str, detail: str) -> None:
        """Queue one dead letter (acknowledged by :meth:`flush`); never blocks for long."""
        key, value, headers = dead_letter_record(record, reason, detail, self._worker_id,
                                                 self._max_bytes)
        letter = self._send(_Letter(key, value, headers))
        with self._lock:
            self._pending.append(letter)

    def flush(self, timeout_s: float) -> None:
        """Wait until every pending dead letter is acknowledged (or given up as too large).

        Raises:
            TransportUnavailableError: Some were not; they are sent again and stay
                pending for the next call.
            ConfigurationError: Kafka refused our credentials or permissions.
        """
        with self._lock:
            pending, self._pending = self._pending, []
        deadline = time.monotonic() + timeout_s
        failed: list[_Letter] = []
        refused: list[_Letter] = []
        for letter in pending:
            if letter.error is not None:
                refused.append(letter)
                continue
            if letter.future is None:
                failed.append(letter)
                continue
            outcome = self._wait(letter, deadline)
            if outcome == "too_large":
                refused.append(letter)
            elif outcome == "failed":
                failed.append(letter)
        for letter in refused:
            if letter.stripped:
                self._drop(letter)
                continue
            key, _, headers = strip_payload(letter.key, letter.value, letter.headers,
                                            self._max_bytes)
            logger.warning("dead letter refused as too large (%s); sending it without its "
                           "payload", letter.error)
            retry = self._send(_Letter(key, None, headers))
            if retry.error is not None:
                self._drop(retry)
            elif retry.future is None:
                failed.append(retry)
            else:
                outcome = self._wait(retry, deadline)
                if outcome == "too_large":
                    self._drop(retry)
                elif outcome == "failed":
                    failed.append(retry)
        if not failed:
            return
        self._sink.reset()
        retried = [self._send(letter) for letter in failed]
        with self._lock:
            self._pending = retried + self._pending
        raise TransportUnavailableError(f"{len(failed)} dead letter(s) not acknowledged yet")

    @staticmethod
    def _wait(letter: _Letter, deadline: float) -> str:
        """Waits for one send: ``sent``, ``too_large`` (``letter.error`` set) or ``failed``.

        Raises:
            ConfigurationError: Kafka refused it for good (authorisation, ...).
        """
        try:
            letter.future.get(timeout=max(0.01, deadline - time.monotonic()))
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the dead letter: {error}") from error
        except _TOO_LARGE as error:
            letter.error = error
            return "too_large"
        except KafkaError:
            return "failed"
        return "sent"

    def _drop(self, letter: _Letter) -> None:
        fields = {k: (v or b"").decode("utf-8", "replace") for k, v in letter.headers}
        reason = fields.get(HEADER_DLQ_REASON, "")
        logger.error("dead letter dropped, refused even without its payload (%s): reason %s, "
                     "origin %s/%s@%s (the original stays in that topic until retention)",
                     letter.error, reason, fields.get(HEADER_DLQ_TOPIC),
                     fields.get(HEADER_DLQ_PARTITION), fields.get(HEADER_DLQ_OFFSET))
        self.dropped += 1
        if self._on_dropped is not None:
            self._on_dropped(reason)


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
