"""``linewatch-producer``: stream one camera's frames into Kafka until the source ends.

A missing topic or refused credentials end the process at start (exit 1); an unreachable
broker does not: frames wait in the bounded buffer and are sent in order when it answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack

from pipeline.errors import ConfigurationError, LinewatchError
from pipeline.kafka.admin import wait_for_topics
from pipeline.kafka.buffer import BufferedFrameSink
from pipeline.kafka.producer import KafkaRecordSink
from workers import startup
from workers.producer.camera import CameraProducer, ProducerMetrics
from workers.producer.settings import ProducerSettings
from workers.producer.sources import open_source

logger = logging.getLogger(__name__)

PROGRAM = "linewatch-producer"


def _run(started: startup.Started[ProducerSettings]) -> int:
    settings, stop = started.settings, started.stop
    metrics = ProducerMetrics()
    sink = BufferedFrameSink(
        KafkaRecordSink(settings.kafka, linger_ms=settings.linger_ms),
        settings.kafka.frames_topic, capacity=settings.buffer_max_frames,
        send_batch=settings.send_batch,
        send_timeout_s=settings.kafka.request_timeout_ms / 1000.0,
        on_sent=metrics.sent.inc, on_dropped=metrics.dropped.inc, on_buffered=metrics.buffered.set)
    producer = CameraProducer(
        lambda: open_source(settings.source), sink, camera_id=settings.camera_id,
        product_line=settings.product_line, encoding=settings.encoding,
        jpeg_quality=settings.jpeg_quality, fps_limit=settings.fps_limit, loop=settings.loop,
        max_frames=settings.max_frames, resize_to=settings.resize_to,
        reconnect_initial_s=settings.reconnect_initial_s,
        reconnect_max_s=settings.reconnect_max_s, metrics=metrics)
    with ExitStack() as stack:
        startup.serve_health(stack, settings.http, metrics.registry,
                             lambda: sink.fatal_error is None, lambda: sink.connected)
        # a missing topic or refused credentials end the process here, clearly
        if not wait_for_topics(settings.kafka, [settings.kafka.frames_topic], stop):
            return startup.EXIT_OK
        sink.start()
        try:
            producer.run(stop)
        except (OSError, LinewatchError) as error:
            sink.close(drain_timeout_s=5.0)
            if isinstance(error, LinewatchError):
                raise
            raise ConfigurationError(f"camera source failed: {error}") from error
        finally:
            metrics.buffered.set(sink.buffered)
        left = sink.close(drain_timeout_s=30.0)
    if sink.fatal_error is not None:
        raise ConfigurationError(str(sink.fatal_error)) from sink.fatal_error
    if left:
        logger.error("%d frame(s) could not be sent before exit", left)
    logger.info("sent %d, dropped %d", sink.sent, sink.dropped)
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Stream one camera into Kafka."""
    arguments = startup.parser(PROGRAM, "Stream one camera's frames into Kafka.")
    return startup.run_process(PROGRAM, arguments, ProducerSettings, _run, argv)
