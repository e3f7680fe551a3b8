"""Topics: check that they exist (clients never create topics), or create them.

Auto-creation is off everywhere: a typo in a topic name fails at start-up instead of
creating a topic. Topics are created by ``python -m workers.topics`` (deployments) or by
the local stack (``devtools.local_stack``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import (
    AuthorizationError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.retry import Backoff, RetryAborted, retry
from pipeline.settings import KafkaSettings

logger = logging.getLogger(__name__)

#: Errors that retrying cannot fix: the process exits with a clear message.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    SaslAuthenticationFailedError, AuthorizationError, UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


class _PermanentFailureWatch(logging.Filter):
    """Remembers the last permanent error kafka-python logged while bootstrapping.

    kafka-python (3.x) logs why a bootstrap connection failed (a refused SASL mechanism,
    wrong credentials) and then reports only ``KafkaTimeoutError: Unable to bootstrap``;
    without this, a refused mechanism looks like an unreachable broker and is retried
    forever. The filter passes every record on unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last: BaseException | None = None
        self.seen_at = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, PERMANENT_ERRORS):
                self.last, self.seen_at = arg, time.monotonic()
        return True

    def since(self, started: float) -> BaseException | None:
        """The permanent error logged after ``started`` (``time.monotonic()``), if any."""
        return self.last if self.seen_at >= started else None


_WATCH = _PermanentFailureWatch()
for _name in ("kafka.net.manager", "kafka.net.connection", "kafka.conn", "kafka.client_async"):
    logging.getLogger(_name).addFilter(_WATCH)


@contextlib.contextmanager
def _admin(kafka: KafkaSettings, what: str,
           timeout_ms: int | None = None) -> Iterator[KafkaAdminClient]:
    """An admin client whose failures become the project's errors; closed afterwards."""
    options = {} if timeout_ms is None else {"bootstrap_timeout_ms": timeout_ms}
    started = time.monotonic()
    try:
        admin = KafkaAdminClient(**kafka.client_kwargs(), **options)
    except PERMANENT_ERRORS as error:
        raise ConfigurationError(f"Kafka refused our credentials: {error}") from error
    except KafkaError as error:
        refused = _WATCH.since(started)
        if refused is not None:
            raise ConfigurationError(
                f"Kafka at {kafka.bootstrap_servers} refused the connection "
                f"(security_protocol {kafka.security_protocol}, sasl_mechanism "
                f"{kafka.sasl_mechanism}): {refused}") from error
        raise TransportUnavailableError(
            f"Kafka at {kafka.bootstrap_servers} cannot be reached: {error}") from error
    try:
        yield admin
    except PERMANENT_ERRORS as error:
        raise ConfigurationError(f"Kafka refused to {what}: {error}") from error
    except KafkaError as error:
        raise TransportUnavailableError(f"Kafka could not {what}: {error}") from error
    finally:
        admin.close()


def require_topics(kafka: KafkaSettings, topics: Iterable[str],
                   timeout_s: float | None = None) -> None:
    """Check that topics exist.

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
    with _admin(kafka, "list topics", timeout_ms) as admin:
        existing = set(admin.list_topics())
    missing = sorted(wanted - existing)
    if missing:
        raise ConfigurationError(
            f"Kafka topic(s) {', '.join(missing)} do not exist on {kafka.bootstrap_servers} "
            "and linewatch never creates topics implicitly (auto-creation off); create them "
            "first (deploy: python -m workers.topics; locally: ./scripts/local-stack.sh up)")


def wait_for_topics(kafka: KafkaSettings, topics: Iterable[str], stop: threading.Event,
                    backoff_max_s: float = 10.0) -> bool:
    """Wait until the broker answers, then check that topics exist.

    Returns:
        True when the topics exist; False when ``stop`` was set first.

    Raises:
        ConfigurationError: A topic is missing or credentials were refused (permanent).
    """
    wanted = list(topics)
    try:
        retry(lambda: require_topics(kafka, wanted), retry_on=(TransportUnavailableError,),
              backoff=Backoff(0.5, backoff_max_s), what="Kafka topic check", stop=stop)
    except RetryAborted:
        return False
    return True


def ensure_topics(kafka: KafkaSettings, partitions: Mapping[str, int],
                  replication_factor: int = 1,
                  configs: Mapping[str, str] | None = None) -> dict[str, int]:
    """Create the topics that do not exist yet (existing ones are left as they are).

    Args:
        kafka: Connection settings.
        partitions: Topic name -> partition count.
        replication_factor: Replicas of each new topic.
        configs: Topic configs of each new topic (e.g. ``min.insync.replicas``).

    Returns:
        Partition count of every topic named, as the broker reports it afterwards.

    Raises:
        ConfigurationError: The broker refused our credentials or the request.
        TransportUnavailableError: The broker cannot be reached.
    """
    with _admin(kafka, "create topics") as admin:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, count, replication_factor, topic_configs=dict(configs or {}))
                  for name, count in partitions.items() if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                logger.debug("topics created concurrently")
            logger.info("created topics %s", {t.name: t.num_partitions for t in wanted})
        described = admin.describe_topics(list(partitions))
    # kafka-python names the field "name" (newer protocol versions) or "topic"
    return {topic.get("name") or topic["topic"]: len(topic.get("partitions") or [])
            for topic in described}
