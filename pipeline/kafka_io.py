"""Thin Kafka adapters (kafka-python).

Topic setup, frame source, record sink, and the buffered frame sink of camera producers.

Adapters connect lazily, close cleanly (context managers) and hold no business logic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    AuthorizationError,
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.messages import FrameMessage, Headers
from pipeline.settings import KafkaSettings

logger = logging.getLogger(__name__)

#: Errors that retrying cannot fix: the process exits with a clear message.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    SaslAuthenticationFailedError, AuthorizationError,
)

HEADER_DLQ_REASON = "lw-dlq-reason"
HEADER_DLQ_DETAIL = "lw-dlq-detail"
HEADER_DLQ_TOPIC = "lw-dlq-topic"
HEADER_DLQ_PARTITION = "lw-dlq-partition"
HEADER_DLQ_OFFSET = "lw-dlq-offset"
HEADER_DLQ_WORKER = "lw-dlq-worker"


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


def require_topics(kafka: KafkaSettings, topics: Iterable[str],
                   timeout_s: float | None = None) -> None:
    """Check that topics exist (clients never create topics: auto-creation is off).

    Args:
        kafka: Connection settings.
        topics: Topic names that must exist.
        timeout_s: How long to wait for the broker (default: the request timeout).

    Raises:
        ConfigurationError: A topic is missing, or the broker refused our credentials.
            Retrying cannot fix either: the process exits with this message.
        TransportUnavailableError: The broker cannot be reached right now.
    """
    wanted = set(topics)
    timeout_ms = int((timeout_s or kafka.request_timeout_ms / 1000.0) * 1000)
    try:
        admin = KafkaAdminClient(**kafka.client_kwargs(), bootstrap_timeout_ms=timeout_ms)
    except PERMANENT_ERRORS as error:
        raise ConfigurationError(f"Kafka refused our credentials: {error}") from error
    except KafkaError as error:
        raise TransportUnavailableError(
            f"Kafka at {kafka.bootstrap_servers} cannot be reached: {error}") from error
    try:
        existing = set(admin.list_topics())
    except PERMANENT_ERRORS as error:
        raise ConfigurationError(f"Kafka refused to list topics: {error}") from error
    except KafkaError as error:
        raise TransportUnavailableError(f"Kafka metadata request failed: {error}") from error
    finally:
        admin.close()
    missing = sorted(wanted - existing)
    if missing:
        raise ConfigurationError(
            f"Kafka topic(s) {', '.join(missing)} do not exist on {kafka.bootstrap_servers} "
            "and linewatch never creates topics implicitly (auto-creation off); create them "
            "first (deploy: the topics init job; locally: python -m pipeline.local_stack up)")


def wait_for_topics(kafka: KafkaSettings, topics: Iterable[str], stop: threading.Event,
                    backoff_max_s: float = 10.0) -> bool:
    """Wait until the broker answers, then check that topics exist.

    Returns:
        True when the topics exist; False when ``stop`` was set first.

    Raises:
        ConfigurationError: A topic is missing or credentials were refused (permanent).
    """
    wanted = list(topics)
    backoff = 0.5
    while not stop.is_set():
        try:
            require_topics(kafka, wanted)
            return True
        except TransportUnavailableError as error:
            logger.warning("%s; retrying in %.1fs", error, backoff)
            stop.wait(backoff)
            backoff = min(backoff_max_s, backoff * 2)
    return False


def ensure_topics(kafka: KafkaSettings, partitions: Mapping[str, int]) -> None:
    """Create topics that do not exist yet.

    Args:
        kafka: Connection settings.
        partitions: Topic name -> partition count.

    Raises:
        TransportUnavailableError: The broker cannot be reached.
    """
    try:
        admin = KafkaAdminClient(**kafka.client_kwargs())
    except KafkaError as error:
        raise TransportUnavailableError(f"Kafka admin cannot connect: {error}") from error
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, count, 1) for name, count in partitions.items()
                  if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                logger.debug("topics created concurrently")
            logger.info("created topics %s", {t.name: t.num_partitions for t in wanted})
    finally:
        admin.close()


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
        self._connect_backoff_s = 0.5

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
            logger.warning("%s; retrying in %.1fs", error, self._connect_backoff_s)
            time.sleep(self._connect_backoff_s)
            self._connect_backoff_s = min(10.0, self._connect_backoff_s * 2)
            return []
        self._connect_backoff_s = 0.5
        try:
            batches = consumer.poll(timeout_ms=max(0, int(timeout_ms)), max_records=max_records)
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the consumer: {error}") from error
        now = time.monotonic()
        records = [
            ConsumedRecord(m.topic, m.partition, m.offset, m.key, m.value,
                           [(k, v) for k, v in (m.headers or [])], now)
            for part in batches.values() for m in part
        ]
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


class KafkaRecordSink:
    """Plain producer: send records, flush. Thread-safe (kafka-python's producer is).

    Defaults keep frames safe on a replicated Apache Kafka: ``acks="all"``, retries until
    ``delivery_timeout_ms``, idempotence on (settings), and never creating topics. After a
    failed :meth:`send_all` the producer is rebuilt on next use (:meth:`reset`): a broker
    that restarted without its log (tansu) no longer knows the idempotent producer id and
    answers ``UnknownProducerIdError``/``OutOfOrderSequenceNumberError`` forever, and a
    fresh producer gets a fresh id. The caller resends what failed (duplicates are
    harmless: the worker's writes are idempotent).

    Args:
        kafka: Connection settings.
        producer_options: Extra kafka-python producer options.
    """

    def __init__(self, kafka: KafkaSettings, **producer_options: Any) -> None:
        self._kafka = kafka
        self._options = {"acks": "all", "enable_idempotence": kafka.enable_idempotence,
                         "linger_ms": 5, "allow_auto_create_topics": False,
                         "max_block_ms": kafka.request_timeout_ms, **producer_options}
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self.resets = 0

    @property
    def options(self) -> dict[str, Any]:
        """The kafka-python producer options in use (no connection settings, no secrets)."""
        return dict(self._options)

    def _connection(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = KafkaProducer(**self._kafka.client_kwargs(), **self._options)
                except PERMANENT_ERRORS as error:
                    raise ConfigurationError(f"Kafka refused the producer: {error}") from error
                except KafkaError as error:
                    raise TransportUnavailableError(f"Kafka unavailable: {error}") from error
            return self._producer

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Headers) -> Any:
        """Queue one record; returns kafka-python's future."""
        return self._connection().send(topic, key=key, value=value, headers=headers)

    def send_all(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None, Headers]],
                 timeout_s: float) -> None:
        """Send records and wait until the broker acknowledged all of them.

        Raises:
            TransportUnavailableError: Any record was not acknowledged in time.
            ConfigurationError: The broker refused us permanently.
        """
        try:
            futures = [self.send(topic, key, value, headers) for key, value, headers in records]
            deadline = time.monotonic() + timeout_s
            for future in futures:
                future.get(timeout=max(0.01, deadline - time.monotonic()))
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the write: {error}") from error
        except KafkaError as error:
            self.reset()
            raise TransportUnavailableError(f"Kafka write failed: {error}") from error

    def reset(self) -> None:
        """Drop the producer (unsent records with it); the next send builds a fresh one."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            self.resets += 1
            logger.info("discarding the Kafka producer; the next send uses a fresh one")
            try:
                producer.close(timeout=0)
            except KafkaError:
                logger.debug("closing a failed producer raised", exc_info=True)

    def flush(self, timeout_s: float) -> None:
        """Wait for queued records.

        Raises:
            TransportUnavailableError: Not all were delivered in time.
        """
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise TransportUnavailableError(f"Kafka flush failed: {error}") from error

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed and close."""
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
                self._producer = None

    def __enter__(self) -> KafkaRecordSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def dead_letter_headers(record: ConsumedRecord, reason: str, detail: str,
                        worker_id: str) -> Headers:
    """Original headers plus the dead-letter reason and origin."""
    return [
        *[(k, v) for k, v in record.headers if not k.startswith("lw-dlq-")],
        (HEADER_DLQ_REASON, reason.encode()),
        (HEADER_DLQ_DETAIL, detail[:500].encode("utf-8", "replace")),
        (HEADER_DLQ_TOPIC, record.topic.encode()),
        (HEADER_DLQ_PARTITION, str(record.partition).encode()),
        (HEADER_DLQ_OFFSET, str(record.offset).encode()),
        (HEADER_DLQ_WORKER, worker_id.encode()),
    ]


class BufferedFrameSink:
    """Camera-side sink: bounded local buffer drained to Kafka by a sender thread.

    ``publish`` never blocks the capture loop. When the broker is unreachable the frames
    wait in the buffer; when the buffer is full the oldest frame is dropped and counted
    (never silently: a warning is logged and ``dropped`` goes up). A batch that fails is
    sent again after a backoff, in order (a frame may reach Kafka twice; the worker's
    writes are idempotent).

    Args:
        sink: Record sink to send through.
        topic: Frames topic.
        capacity: Frames the buffer holds, including those in flight.
        send_batch: Frames per send.
        send_timeout_s: How long to wait for the broker's acknowledgements.
        backoff_initial_s: First retry delay.
        backoff_max_s: Largest retry delay.
        on_sent: Called with the number of frames acknowledged.
        on_dropped: Called with the number of frames dropped.
        on_buffered: Called with the number of frames waiting, whenever it changes.
    """

    def __init__(self, sink: KafkaRecordSink, topic: str, capacity: int = 1000,
                 send_batch: int = 32, send_timeout_s: float = 10.0,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 5.0,
                 on_sent: Callable[[int], None] | None = None,
                 on_dropped: Callable[[int], None] | None = None,
                 on_buffered: Callable[[int], None] | None = None) -> None:
        self._sink = sink
        self._topic = topic
        self._capacity = capacity
        self._send_batch = send_batch
        self._send_timeout_s = send_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._on_sent = on_sent or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n: None)
        self._on_buffered = on_buffered or (lambda n: None)
        self.max_buffered = 0
        self._buffer: deque[FrameMessage] = deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0
        self.connected = False
        self.fatal_error: BaseException | None = None
        self._drain_deadline = 0.0

    @property
    def buffered(self) -> int:
        """Frames waiting (including those in flight)."""
        with self._cond:
            return len(self._buffer) + self._in_flight

    def start(self) -> BufferedFrameSink:
        """Start the sender thread."""
        self._thread = threading.Thread(target=self._run, name="frame-sender", daemon=True)
        self._thread.start()
        return self

    def publish(self, frame: FrameMessage) -> None:
        """Queue a frame (never blocks); drops the oldest when full.

        Raises:
            ConfigurationError: The sender stopped on a permanent error.
        """
        if self.fatal_error is not None:
            raise ConfigurationError(str(self.fatal_error)) from self.fatal_error
        dropped = 0
        with self._cond:
            self._buffer.append(frame)
            while len(self._buffer) + self._in_flight > self._capacity and self._buffer:
                self._buffer.popleft()
                dropped += 1
            waiting = len(self._buffer) + self._in_flight
            self.max_buffered = max(self.max_buffered, waiting)
            self._cond.notify()
        if dropped:
            self._count_dropped(dropped)
        self._on_buffered(waiting)

    def _count_dropped(self, count: int) -> None:
        self.dropped += count
        self._on_dropped(count)
        logger.warning("local buffer full (%d frames): dropped %d oldest frame(s), %d in all",
                       self._capacity, count, self.dropped)

    def _take(self) -> list[FrameMessage]:
        with self._cond:
            while not self._buffer and not self._closing:
                self._cond.wait(0.5)
            batch = [self._buffer.popleft()
                     for _ in range(min(self._send_batch, len(self._buffer)))]
            self._in_flight = len(batch)
            return batch

    def _give_back(self, batch: list[FrameMessage]) -> None:
        with self._cond:
            self._in_flight = 0
            self._buffer.extendleft(reversed(batch))
            dropped = 0
            while len(self._buffer) > self._capacity:
                self._buffer.popleft()
                dropped += 1
        if dropped:
            self._count_dropped(dropped)

    def _run(self) -> None:
        backoff = self._backoff_initial_s
        while True:
            batch = self._take()
            if not batch:
                if self._closing:
                    return
                continue
            try:
                self._sink.send_all(
                    self._topic, [(f.key, f.payload, f.headers()) for f in batch],
                    self._send_timeout_s)
            except ConfigurationError as error:
                logger.error("Kafka refused frames permanently: %s", error)
                self.fatal_error = error
                self._give_back(batch)
                return
            except TransportUnavailableError as error:
                self._give_back(batch)
                if self.connected or backoff == self._backoff_initial_s:
                    logger.warning("broker unreachable (%s); %d frame(s) buffered, retrying "
                                   "in %.1fs", error, self.buffered, backoff)
                self.connected = False
                if self._closing and self._drain_deadline < time.monotonic():
                    return
                time.sleep(backoff)
                backoff = min(self._backoff_max_s, backoff * 2)
                continue
            with self._cond:
                self._in_flight = 0
            if not self.connected:
                logger.info("broker reachable; sending")
            self.connected = True
            backoff = self._backoff_initial_s
            self.sent += len(batch)
            self._on_sent(len(batch))
            self._on_buffered(self.buffered)

    def close(self, drain_timeout_s: float = 10.0) -> int:
        """Send what is buffered (up to the timeout), stop the thread.

        Returns:
            Frames left unsent (counted as dropped).
        """
        self._drain_deadline = time.monotonic() + drain_timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(drain_timeout_s + self._send_timeout_s)
        left = self.buffered
        if left:
            self._count_dropped(left)
        self._sink.close()
        return left

    def __enter__(self) -> BufferedFrameSink:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


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
