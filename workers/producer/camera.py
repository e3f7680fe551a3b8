"""Camera producer: frames of one camera -> frame messages -> a publisher (Kafka in production).

Reads a :class:`~workers.producer.sources.FrameReader` at up to ``fps_limit``, encodes each
frame (JPEG by default) and publishes it; a live source that drops is reopened with
backoff (:mod:`pipeline.retry`). The publisher in production is the bounded buffer of
:class:`pipeline.kafka.buffer.BufferedFrameSink`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.observability import new_registry
from pipeline.retry import Backoff, RetryAborted, retry
from pipeline.wire.codec import encode_image
from pipeline.wire.messages import Encoding, FrameMessage, validate_id
from workers.producer.sources import FrameReader

logger = logging.getLogger(__name__)


class FramePublisher(Protocol):
    """Takes frames (the buffered Kafka sink in production)."""

    def publish(self, frame: FrameMessage) -> None:
        """Queue a frame."""
        ...


class ProducerMetrics:
    """The producer's Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        r = self.registry
        self.captured = Counter("linewatch_producer_frames_captured_total", "Frames read.",
                                registry=r)
        self.sent = Counter("linewatch_producer_frames_sent_total",
                            "Frames acknowledged by Kafka.", registry=r)
        self.dropped = Counter("linewatch_producer_frames_dropped_total",
                               "Frames dropped because the local buffer was full.", registry=r)
        self.buffered = Gauge("linewatch_producer_frames_buffered",
                              "Frames waiting in the local buffer.", registry=r)
        self.reconnects = Counter("linewatch_producer_camera_reconnects_total",
                                  "Times the camera was reopened after a drop.", registry=r)


class CameraProducer:
    """Reads frames from one camera and publishes them.

    Args:
        open_reader: Opens the source (called again to reconnect).
        publisher: Where frames go.
        camera_id: Camera id (Kafka key).
        product_line: Product line.
        encoding: Payload encoding.
        jpeg_quality: JPEG quality.
        fps_limit: Most frames per second (None: as fast as the source gives them).
        loop: Start a finite source again at its end.
        max_frames: Stop after this many frames.
        resize_to: Resize frames to this square side first.
        reconnect_initial_s: First reconnect delay.
        reconnect_max_s: Largest reconnect delay.
        metrics: Metrics to update.
        on_frame: Called with each frame message and its image (tests, demo labels).
    """

    def __init__(self, open_reader: Callable[[], FrameReader], publisher: FramePublisher, *,
                 camera_id: str, product_line: str, encoding: Encoding = Encoding.JPEG,
                 jpeg_quality: int = 90, fps_limit: float | None = None, loop: bool = False,
                 max_frames: int | None = None, resize_to: int | None = None,
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 10.0,
                 metrics: ProducerMetrics | None = None,
                 on_frame: Callable[[FrameMessage], None] | None = None) -> None:
        self._open = open_reader
        self._publisher = publisher
        self.camera_id = validate_id(camera_id, "camera id")
        self.product_line = validate_id(product_line, "product line")
        self._encoding = encoding
        self._quality = jpeg_quality
        self._interval = 1.0 / fps_limit if fps_limit else 0.0
        self._loop = loop
        self._max_frames = max_frames
        self._resize_to = resize_to
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self.metrics = metrics or ProducerMetrics()
        self._on_frame = on_frame
        self._session = f"{int(time.time() * 1000):013d}"
        self.sequence = 0

    def run(self, stop: threading.Event) -> int:
        """Publish frames until the source ends, ``max_frames`` or ``stop``.

        Returns:
            Frames published.
        """
        reader = self._open_with_backoff(stop)
        next_due = time.monotonic()
        try:
            while reader is not None and not stop.is_set():
                if self._max_frames is not None and self.sequence >= self._max_frames:
                    break
                image = reader.read()
                if image is None:
                    reader.close()
                    if reader.live:
                        logger.warning("camera %s dropped; reconnecting", self.camera_id)
                        self.metrics.reconnects.inc()
                        reader = self._open_with_backoff(stop)
                    elif self._loop:
                        reader = self._open()
                    else:
                        reader = None
                    continue
                if self._interval:
                    delay = next_due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    next_due = max(next_due + self._interval, time.monotonic() - self._interval)
                self._publish(image)
        finally:
            if reader is not None:
                reader.close()
        logger.info("camera %s: %d frame(s) published", self.camera_id, self.sequence)
        return self.sequence

    def _open_with_backoff(self, stop: threading.Event) -> FrameReader | None:
        if stop.is_set():
            return None
        try:
            return retry(self._open, retry_on=(OSError,),
                         backoff=Backoff(self._reconnect_initial_s, self._reconnect_max_s),
                         what=f"opening camera {self.camera_id}", stop=stop)
        except RetryAborted:
            return None

    def _publish(self, image: np.ndarray) -> None:
        capture_ts = time.time()
        if self._resize_to:
            image = cv2.resize(image, (self._resize_to, self._resize_to),
                               interpolation=cv2.INTER_AREA)
        height, width = image.shape[:2]
        frame = FrameMessage(
            camera_id=self.camera_id, product_line=self.product_line,
            frame_id=f"{self._session}-{self.sequence:08d}", capture_ts=capture_ts,
            encoding=self._encoding, width=width, height=height,
            payload=encode_image(image, self._encoding, self._quality),
        )
        self.sequence += 1
        self.metrics.captured.inc()
        if self._on_frame is not None:
            self._on_frame(frame)
        self._publisher.publish(frame)
