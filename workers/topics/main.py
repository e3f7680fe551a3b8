"""``linewatch-topics``: create the topics linewatch uses, idempotently (a start-up job).

Existing topics are left as they are; a frames topic with fewer partitions than asked for
is reported (more partitions would change which partition a camera's frames go to, so
that stays an operator's decision).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.kafka.admin import ensure_topics
from pipeline.retry import Backoff, RetryAborted, retry
from workers import startup
from workers.topics.settings import TopicsSettings

logger = logging.getLogger(__name__)

PROGRAM = "linewatch-topics"


def _run(started: startup.Started[TopicsSettings]) -> int:
    settings = started.settings
    kafka = settings.kafka
    wanted = {kafka.frames_topic: settings.frames_partitions,
              kafka.dead_letter_topic: settings.dead_letter_partitions}
    configs = {"min.insync.replicas": str(settings.min_insync_replicas),
               "max.message.bytes": str(kafka.max_message_bytes),
               "retention.ms": str(settings.retention_ms),
               "unclean.leader.election.enable": "false"}
    timer = threading.Timer(settings.timeout_s, started.stop.set)
    timer.start()
    try:
        partitions = retry(
            lambda: ensure_topics(kafka, wanted, settings.replication_factor, configs),
            retry_on=(TransportUnavailableError,), backoff=Backoff(1.0, 10.0),
            what="creating topics", stop=started.stop)
    except RetryAborted as aborted:
        raise ConfigurationError(f"Kafka at {kafka.bootstrap_servers} did not answer within "
                                 f"{settings.timeout_s:.0f}s: {aborted.last_error}") from None
    finally:
        timer.cancel()
    for topic, count in partitions.items():
        print(f"{topic}: {count} partition(s)")
        if count < wanted[topic]:
            logger.warning("%s has %d partitions, fewer than the %d asked for", topic, count,
                           wanted[topic])
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Create the topics that do not exist yet."""
    arguments = startup.parser(PROGRAM, "Create linewatch's Kafka topics (idempotent).")
    return startup.run_process(PROGRAM, arguments, TopicsSettings, _run, argv)
