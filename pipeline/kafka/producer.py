"""Writing Kafka: the record sink every producer-side adapter sends through."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.kafka.admin import PERMANENT_ERRORS
from pipeline.settings import KafkaSettings
from pipeline.wire.messages import Headers

logger = logging.getLogger(__name__)


class KafkaRecordSink:
    """Plain producer: send records, flush. Thread-safe (kafka-python's producer is).

    Defaults keep frames safe on a replicated Apache Kafka: ``acks="all"``, retries until
    ``delivery_timeout_ms``, idempotence on (settings), never creating topics, and the
    one record limit of every process (``max_request_size`` = ``max_message_bytes``). After a
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
                         "max_request_size": kafka.max_message_bytes,
                         "max_block_ms": kafka.request_timeout_ms, **producer_options}
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self.resets = 0

    @property
    def max_request_size(self) -> int:
        """The largest record this producer sends (bytes)."""
        return int(self._options["max_request_size"])

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
            ConfigurationError: The broker refused us permanently, or refused a record as
                too large (resending cannot help: the record limits disagree).
        """
        try:
            futures = [self.send(topic, key, value, headers) for key, value, headers in records]
            deadline = time.monotonic() + timeout_s
            for future in futures:
                future.get(timeout=max(0.01, deadline - time.monotonic()))
        except PERMANENT_ERRORS as error:
            raise ConfigurationError(f"Kafka refused the write: {error}") from error
        except (MessageSizeTooLargeError, RecordListTooLargeError) as error:
            raise ConfigurationError(
                f"Kafka refused a record as too large ({error}); keep "
                f"LINEWATCH_KAFKA__MAX_MESSAGE_BYTES ({self.max_request_size}) at or below "
                f"the topic's max.message.bytes") from error
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
