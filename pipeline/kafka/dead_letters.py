"""Dead letters on Kafka: the sink that never loses one, and the reader of the topic.

The header schema is :mod:`pipeline.wire.dead_letters`; listing and replaying is the
``python -m workers.dead_letters`` tool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.kafka.admin import PERMANENT_ERRORS, require_topics
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.settings import KafkaSettings
from pipeline.wire.dead_letters import DeadLetter, dead_letter_headers
from pipeline.wire.messages import ConsumedRecord, Headers

logger = logging.getLogger(__name__)


class KafkaDeadLetterSink:
    """Sends unprocessable records to the dead-letter topic, never losing one.

    Each dead letter keeps the original key, bytes and headers, and adds the reason, a
    detail and the origin (topic/partition/offset). A letter stays pending until the
    broker acknowledged it: :meth:`flush` waits for every pending letter and sends again
    the ones that failed (through a fresh producer), raising
    :class:`TransportUnavailableError` until all are acknowledged, so the worker commits
    a batch's offsets only after its dead letters are safe.

    Args:
        sink: Record sink.
        topic: Dead-letter topic.
        worker_id: Recorded in each dead letter.
    """

    def __init__(self, sink: KafkaRecordSink, topic: str, worker_id: str) -> None:
        self._sink = sink
        self._topic = topic
        self._worker_id = worker_id
        self._pending: list[tuple[bytes | None, bytes | None, Headers, Any]] = []
        self._lock = threading.Lock()

    def _send(self, key: bytes | None, value: bytes | None, headers: Headers) -> Any:
        try:
            return self._sink.send(self._topic, key, value, headers)
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the dead letter: {error}") from error
        except (KafkaError, TransportUnavailableError) as error:
            logger.warning("dead letter not sent yet (%s); flush retries it", error)
            return None

    def dead_letter(self, record: ConsumedRecord, reason: str, detail: str) -> None:
        """Queue one dead letter (acknowledged by :meth:`flush`); never blocks for long."""
        headers = dead_letter_headers(record, reason, detail, self._worker_id)
        future = self._send(record.key, record.value, headers)
        with self._lock:
            self._pending.append((record.key, record.value, headers, future))

    def flush(self, timeout_s: float) -> None:
        """Wait until every pending dead letter is acknowledged.

        Raises:
            TransportUnavailableError: Some were not; they are sent again and stay
                pending for the next call.
        """
        with self._lock:
            pending, self._pending = self._pending, []
        deadline = time.monotonic() + timeout_s
        failed: list[tuple[bytes | None, bytes | None, Headers]] = []
        for key, value, headers, future in pending:
            if future is None:
                failed.append((key, value, headers))
                continue
            try:
                future.get(timeout=max(0.01, deadline - time.monotonic()))
            except PERMANENT_ERRORS as error:
                raise ConfigurationError(f"Kafka refused the dead letter: {error}") from error
            except KafkaError:
                failed.append((key, value, headers))
        if not failed:
            return
        self._sink.reset()
        retried = [(key, value, headers, self._send(key, value, headers))
                   for key, value, headers in failed]
        with self._lock:
            self._pending = retried + self._pending
        raise TransportUnavailableError(f"{len(failed)} dead letter(s) not acknowledged yet")


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
