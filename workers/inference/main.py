"""``linewatch-worker``: one inference worker, run until SIGTERM/SIGINT.

Wires the real adapters from settings: the Kafka frame source and dead-letter sink, the
Redis result sink, the model store with the PyTorch runtime and the model-update listener,
and serves ``/healthz`` ``/readyz`` ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack

from pipeline.kafka.consumer import KafkaFrameSource
from pipeline.kafka.dead_letters import KafkaDeadLetterSink
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.model_store import ModelStore
from pipeline.redis.client import connect
from pipeline.redis.model_events import ModelUpdateListener
from pipeline.redis.results import RedisResultSink
from pipeline.runtimes import pytorch
from pipeline.wire.layout import RedisKeys
from workers import startup
from workers.inference.health import HealthPublisher
from workers.inference.metrics import WorkerMetrics
from workers.inference.settings import WorkerSettings
from workers.inference.worker import InferenceWorker

logger = logging.getLogger(__name__)

PROGRAM = "linewatch-worker"


def build_worker(settings: WorkerSettings, stack: ExitStack) -> InferenceWorker:
    """Wire the real adapters from settings (everything closed by ``stack``)."""
    metrics = WorkerMetrics()
    kafka = settings.kafka
    store = ModelStore(
        settings.model_store, loader=pytorch.loader(settings.expected_backbone),
        device=pytorch.resolve_device(settings.device), cache_size=settings.model_cache_size,
        refresh_s=settings.model_refresh_s,
        on_loaded=lambda line, version: metrics.models_loaded.labels(
            line=line, version=version).set(1))
    # promotions/rollbacks (Redis pub/sub): load the new version, serve it from the next batch
    stack.enter_context(ModelUpdateListener(connect(settings.redis),
                                            settings.redis.key_prefix, store))
    source = stack.enter_context(KafkaFrameSource(
        kafka, kafka.frames_topic, settings.group_id,
        required_topics=[kafka.frames_topic, kafka.dead_letter_topic],
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.limits.max_message_bytes + 65536,
        client_id=settings.worker_id,
    ))
    dead_letter_producer = stack.enter_context(KafkaRecordSink(kafka))
    sink = stack.enter_context(RedisResultSink(settings.redis))
    if not sink.ping():  # refused credentials raise ConfigurationError: exit at once
        logger.warning("Redis does not answer yet; results wait until it does")
    worker = InferenceWorker(
        source, sink, KafkaDeadLetterSink(dead_letter_producer, kafka.dead_letter_topic,
                                          settings.worker_id),
        store, worker_id=settings.worker_id,
        max_batch_size=settings.batching.max_batch_size,
        max_wait_ms=settings.batching.max_wait_ms, limits=settings.limits.image_limits(),
        metrics=metrics, decode_threads=settings.batching.decode_threads,
        store_frames=settings.redis.store_frames,
        retry_backoff_max_s=settings.retry_backoff_max_s)
    # the operator's console reads this record (lag, frames/s, dead letters, models)
    stack.enter_context(HealthPublisher(
        connect(settings.redis), RedisKeys(settings.redis.key_prefix), settings.worker_id,
        worker.health, settings.health_interval_s))
    return worker


def _run(started: startup.Started[WorkerSettings]) -> int:
    settings = started.settings
    with ExitStack() as stack:
        worker = build_worker(settings, stack)
        startup.serve_health(stack, settings.http, worker.metrics.registry,
                             lambda: worker.alive and worker.fatal_error is None,
                             lambda: worker.ready)
        worker.run(started.stop)
        if worker.fatal_error is not None:
            raise worker.fatal_error
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run one inference worker until SIGTERM/SIGINT."""
    arguments = startup.parser(PROGRAM, "Run one inference worker (Kafka -> model -> Redis).")
    return startup.run_process(PROGRAM, arguments, WorkerSettings, _run, argv)
