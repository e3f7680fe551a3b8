"""``linewatch-worker``: one inference worker, run until SIGTERM/SIGINT.

Wires the real adapters from settings: the Kafka frame source and dead-letter sink, the
Redis result sink, the model store with the PyTorch runtime and the model-update listener,
and serves ``/healthz`` ``/readyz`` ``/metrics``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack

from pipeline.errors import ConfigurationError
from pipeline.kafka.consumer import KafkaFrameSource
from pipeline.kafka.dead_letters import KafkaDeadLetterSink
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.model_store import ModelStore
from pipeline.redis.client import connect
from pipeline.redis.model_events import ModelUpdateListener
from pipeline.redis.results import RedisResultSink
from pipeline.runtimes import loader, pytorch
from pipeline.wire.layout import RedisKeys
from workers import startup
from workers.inference.admission import CaptureWindow
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
    device = pytorch.resolve_device(settings.device)
    if settings.runtime != "torch" and importlib.util.find_spec(settings.runtime) is None:
        raise ConfigurationError(f"runtime: {settings.runtime} is not installed "
                                 "(pip install 'linewatch[runtimes]')")
    batch_size = settings.batching.batch_size(device)
    logger.info("runtime %s on %s, batches of up to %d", settings.runtime, device, batch_size)
    store = ModelStore(
        settings.model_store,
        loader=loader(settings.runtime, settings.expected_backbone, settings.runtime_cache,
                      settings.runtime_threads, settings.runtime_precision),
        device=device, cache_size=settings.model_cache_size,
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
        # one record limit everywhere: a frame that fits the topic is always fetched
        max_partition_fetch_bytes=kafka.max_message_bytes,
        fetch_max_bytes=max(kafka.max_message_bytes, 50 * 1024 * 1024),
        client_id=settings.worker_id,
    ))
    dead_letter_producer = stack.enter_context(KafkaRecordSink(kafka))
    sink = stack.enter_context(RedisResultSink(settings.redis,
                                               settings.limits.max_capture_lead_s))
    if not sink.ping():  # refused credentials raise ConfigurationError: exit at once
        logger.warning("Redis does not answer yet; results wait until it does")
    worker = InferenceWorker(
        source, sink, KafkaDeadLetterSink(
            dead_letter_producer, kafka.dead_letter_topic, settings.worker_id,
            kafka.max_message_bytes,
            on_dropped=lambda reason: metrics.dead_letters_dropped.labels(reason=reason).inc()),
        store, worker_id=settings.worker_id,
        max_batch_size=batch_size,
        max_wait_ms=settings.batching.max_wait_ms,
        limits=settings.limits.image_limits(kafka.max_message_bytes),
        metrics=metrics, decode_threads=settings.batching.decode_threads,
        store_frames=settings.redis.store_frames,
        retry_backoff_max_s=settings.retry_backoff_max_s,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        window=CaptureWindow(settings.limits.max_capture_age_s,
                             settings.limits.max_capture_lead_s),
        probe_interval_s=settings.readiness_probe_s)
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
    # Before torch loads (it is imported with the first model): OpenMP threads that
    # spin-wait collapse eager PyTorch when the cores are shared with decoding, publishing
    # or other processes (bench/speed.py --runtimes torch on 2 busy cores: 1-12 images/s
    # unset, 16-24 with PASSIVE, side by side). OpenVINO and ONNX Runtime do not use it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    arguments = startup.parser(PROGRAM, "Run one inference worker (Kafka -> model -> Redis).")
    return startup.run_process(PROGRAM, arguments, WorkerSettings, _run, argv)
