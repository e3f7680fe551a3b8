"""Reading Kafka: the worker's frame source, and bounded reads of a topic's newest records.

:class:`KafkaFrameSource` is a consumer-group member whose offsets are committed
explicitly, only after a batch is stored (see ``workers.inference``). :class:`TopicTail`
reads the newest records of every partition without a group (the trainer's capture of
known-good frames), bounded by a record count and a timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, IllegalStateError, KafkaError

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.kafka.admin import PERMANENT_ERRORS, require_topics
from pipeline.retry import Backoff
from pipeline.settings import KafkaSettings
from pipeline.wire.messages import ConsumedRecord

logger = logging.getLogger(__name__)


def consumed(message: Any, received_monotonic: float) -> ConsumedRecord:
    """A kafka-python ``ConsumerRecord`` as a :class:`ConsumedRecord`."""
    return ConsumedRecord(message.topic, message.partition, message.offset, message.key,
                          message.value, [(k, v) for k, v in (message.headers or [])],
                          received_monotonic)


class _RebalanceLogger(ConsumerRebalanceListener):
    """Logs assignment changes (cannot commit here: see the worker's commit rule)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._on_change = on_change

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        logger.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        logger.info("partitions assigned: %s",
                    sorted((tp.topic, tp.partition) for tp in assigned))
        if self._on_change is not None:
            self._on_change()


class KafkaFrameSource:
    """Consumer-group member reading frame records; offsets committed explicitly.

    On first use it checks that ``required_topics`` exist: a missing topic is a permanent
    fault (:class:`ConfigurationError`); an unreachable broker is transient (``poll``
    returns nothing and tries again after a backoff).

    Args:
        kafka: Connection settings.
        topic: Topic to subscribe to.
        group_id: Consumer group.
        required_topics: Topics checked at connection time (default: ``topic``).
        consumer_options: Extra kafka-python consumer options (timeouts, fetch waits).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, group_id: str,
                 required_topics: Sequence[str] | None = None,
                 **consumer_options: Any) -> None:
        self._kafka = kafka
        self._topic = topic
        self._group_id = group_id
        self._required = list(required_topics) if required_topics is not None else [topic]
        self._options = {"allow_auto_create_topics": False, **consumer_options}
        self._consumer: KafkaConsumer | None = None
        self._paused = False
        self._connect_backoff = Backoff(0.5, 10.0)

    def _connection(self) -> KafkaConsumer:
        if self._consumer is None:
            require_topics(self._kafka, self._required)
            try:
                consumer = KafkaConsumer(
                    group_id=self._group_id, enable_auto_commit=False,
                    auto_offset_reset="earliest", **self._kafka.client_kwargs(), **self._options,
                )
            except PERMANENT_ERRORS as error:
                raise ConfigurationError(f"Kafka refused the consumer: {error}") from error
            except KafkaError as error:
                raise TransportUnavailableError(f"Kafka unavailable: {error}") from error
            consumer.subscribe([self._topic], listener=_RebalanceLogger())
            self._consumer = consumer
        return self._consumer

    def poll(self, timeout_ms: float, max_records: int) -> list[ConsumedRecord]:
        """Fetch up to ``max_records`` records, waiting at most ``timeout_ms``.

        While paused, this keeps the group membership alive and returns nothing. While
        the broker cannot be reached at connection time, this waits a backoff and returns
        nothing (the caller simply polls again).

        Raises:
            ConfigurationError: Permanent fault (missing topic, refused credentials).
        """
        try:
            consumer = self._connection()
        except TransportUnavailableError as error:
            delay = self._connect_backoff.next_delay()
            logger.warning("%s; retrying in %.1fs", error, delay)
            time.sleep(delay)
            return []
        self._connect_backoff.reset()
        try:
            batches = consumer.poll(timeout_ms=max(0, int(timeout_ms)), max_records=max_records)
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the consumer: {error}") from error
        now = time.monotonic()
        records = [consumed(m, now) for part in batches.values() for m in part]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        """Commit ``next_offsets`` (topic, partition) -> next offset to read.

        Partitions no longer assigned to this member are left out (their new owner
        re-reads from the last commit; results are idempotent).

        Returns:
            True when everything asked for was committed.
        """
        if self._consumer is None:
            return False
        consumer = self._consumer
        assigned = consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in next_offsets.items()
            if TopicPartition(topic, partition) in assigned
        }
        if not offsets:
            return not next_offsets
        try:
            consumer.commit(offsets, timeout_ms=self._kafka.request_timeout_ms)
        except CommitFailedError as error:
            logger.warning("commit failed after a rebalance (results are stored; the new "
                           "owner will replay idempotently): %s", error)
            return False
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the commit: {error}") from error
        except (KafkaError, IllegalStateError) as error:
            logger.warning("commit failed (%s); the frames are stored and a later commit or "
                           "an idempotent replay covers them", error)
            return False
        return len(offsets) == len(next_offsets)

    def pause(self) -> None:
        """Stop fetching from every assigned partition (membership stays alive)."""
        consumer = self._consumer
        if consumer is not None and not self._paused:
            consumer.pause(*consumer.assignment())
            self._paused = True

    def resume(self) -> None:
        """Fetch again."""
        if self._consumer is not None and self._paused:
            self._consumer.resume(*self._consumer.paused())
            self._paused = False

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the end of each assigned partition, as far as known locally.

        Lag is the partition's high watermark (from the last fetch response) minus this
        member's fetch position; no request is sent. Partitions without a fetch yet are
        left out.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = consumer.position(tp, timeout_ms=0)
            except (KafkaError, IllegalStateError):
                continue
            if position is not None:
                lags[(tp.topic, tp.partition)] = max(0, highwater - position)
        return lags

    def assignment(self) -> set[tuple[str, int]]:
        """Partitions currently assigned."""
        if self._consumer is None:
            return set()
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self) -> None:
        """Leave the group and close."""
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None

    def __enter__(self) -> KafkaFrameSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class TopicTail:
    """The newest records of every partition of a topic, read without a consumer group.

    Partitions are assigned directly and read up to the end offsets seen when reading
    starts, so the read is bounded even while records keep arriving.

    Args:
        kafka: Connection settings.
        topic: Topic to read.
        max_records: Newest records read per partition at most.
        timeout_s: The whole read stops after this long (:attr:`timed_out` tells).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, max_records: int,
                 timeout_s: float) -> None:
        self._kafka = kafka
        self._topic = topic
        self._max_records = max_records
        self._timeout_s = timeout_s
        self.total = 0
        self.timed_out = False

    def records(self, on_start: Callable[[int], None] | None = None) -> Iterator[ConsumedRecord]:
        """Yield the records, partition by partition as they arrive.

        Args:
            on_start: Called with the number of records to read, once it is known.

        Raises:
            TransportUnavailableError: The broker cannot be reached or the topic is unknown.
        """
        try:
            consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                     fetch_max_wait_ms=100, **self._kafka.client_kwargs())
        except KafkaError as error:
            raise TransportUnavailableError(f"Kafka unavailable: {error}") from error
        deadline = time.monotonic() + self._timeout_s
        try:
            remaining = self._assign(consumer, deadline)
            if on_start is not None:
                on_start(self.total)
            while remaining and time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=500, max_records=500)
                now = time.monotonic()
                for tp, messages in batches.items():
                    for message in messages:
                        if tp in remaining and message.offset < remaining[tp]:
                            yield consumed(message, now)
                for tp in list(remaining):
                    if consumer.position(tp) >= remaining[tp]:
                        del remaining[tp]
            self.timed_out = bool(remaining)
            if self.timed_out:
                logger.warning("reading %s stopped by its %.0fs timeout", self._topic,
                               self._timeout_s)
        except KafkaError as error:
            raise TransportUnavailableError(f"Kafka unavailable: {error}") from error
        finally:
            consumer.close()

    def _assign(self, consumer: KafkaConsumer, deadline: float) -> dict[TopicPartition, int]:
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(self._topic)
            if partitions is None:
                time.sleep(0.2)
        if not partitions:
            raise TransportUnavailableError(f"topic {self._topic!r} is unknown to the broker")
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        begin = consumer.beginning_offsets(assigned)
        end = consumer.end_offsets(assigned)
        remaining = {}
        for tp in assigned:
            start = max(begin[tp], end[tp] - self._max_records)
            self.total += end[tp] - start
            if end[tp] > start:
                consumer.seek(tp, start)
                remaining[tp] = end[tp]
        return remaining
