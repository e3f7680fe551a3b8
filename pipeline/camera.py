"""Camera producer: OpenCV source -> frame messages -> bounded buffer -> Kafka.

One process per camera. Sources: a video file, an RTSP/HTTP URL, a camera device index
or a folder of images. A live source that drops is reopened with exponential backoff;
while the broker is unreachable frames wait in a bounded local buffer (see
:class:`pipeline.kafka_io.BufferedFrameSink`); dropped frames are counted and logged.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.codec import encode_image
from pipeline.errors import ConfigurationError, LinewatchError
from pipeline.kafka_io import BufferedFrameSink, KafkaRecordSink, wait_for_topics
from pipeline.messages import Encoding, FrameMessage, validate_id
from pipeline.observability import HealthServer, MetricsRegistry
from pipeline.process import configure_logging, load_settings, stop_event_on_signals
from pipeline.settings import ProducerSettings

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class FrameReader(Protocol):
    """A source of RGB frames."""

    live: bool

    def read(self) -> np.ndarray | None:
        """Next HxWx3 uint8 RGB frame, or None at the end (or when a live source drops)."""
        ...

    def close(self) -> None:
        """Release the source."""
        ...


class OpenCVReader:
    """Video file, RTSP/HTTP URL or device index through ``cv2.VideoCapture``.

    Raises:
        OSError: The source cannot be opened.
    """

    def __init__(self, source: str | int) -> None:
        self.live = isinstance(source, int) or "://" in str(source)
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            self._capture.release()
            raise OSError(f"OpenCV cannot open {source!r}")

    def read(self) -> np.ndarray | None:
        """Next frame (RGB)."""
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Release the capture."""
        self._capture.release()


class ImageFolderReader:
    """The images of a folder, in name order (unreadable files are skipped and logged)."""

    live = False

    def __init__(self, folder: Path) -> None:
        self._paths = sorted(p for p in Path(folder).rglob("*")
                             if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise OSError(f"no images in {folder}")
        self._index = 0

    def read(self) -> np.ndarray | None:
        """Next image (RGB)."""
        while self._index < len(self._paths):
            path = self._paths[self._index]
            self._index += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            logger.warning("skipping unreadable image %s", path)
        return None

    def close(self) -> None:
        """Nothing to release."""


def open_source(source: str) -> FrameReader:
    """Open a device index, URL, image folder or video file.

    Raises:
        OSError: The source cannot be opened.
    """
    if source.isdigit():
        return OpenCVReader(int(source))
    if "://" not in source and Path(source).is_dir():
        return ImageFolderReader(Path(source))
    if "://" not in source and not Path(source).exists():
        raise OSError(f"{source} does not exist")
    return OpenCVReader(source)


class FramePublisher(Protocol):
    """Takes frames (the buffered Kafka sink in production)."""

    def publish(self, frame: FrameMessage) -> None:
        """Queue a frame."""
        ...


class ProducerMetrics:
    """The producer's Prometheus metrics."""

    def __init__(self, registry: MetricsRegistry | None = None) -> None:
        self.registry = registry or MetricsRegistry()
        r = self.registry
        self.captured = r.counter("linewatch_producer_frames_captured_total", "Frames read.")
        self.sent = r.counter("linewatch_producer_frames_sent_total",
                              "Frames acknowledged by Kafka.")
        self.dropped = r.counter("linewatch_producer_frames_dropped_total",
                                 "Frames dropped because the local buffer was full.")
        self.buffered = r.gauge("linewatch_producer_frames_buffered",
                                "Frames waiting in the local buffer.")
        self.reconnects = r.counter("linewatch_producer_camera_reconnects_total",
                                    "Times the camera was reopened after a drop.")


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
        reader = self._open_with_backoff(stop, first=True)
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

    def _open_with_backoff(self, stop: threading.Event, first: bool = False) -> FrameReader | None:
        delay = self._reconnect_initial_s
        while not stop.is_set():
            try:
                return self._open()
            except OSError as error:
                if first and not self._looks_live():
                    raise
                logger.warning("camera %s: %s; retrying in %.1fs", self.camera_id, error, delay)
                if stop.wait(delay):
                    return None
                delay = min(self._reconnect_max_s, delay * 2)
        return None

    def _looks_live(self) -> bool:
        return True

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


def main(argv: Sequence[str] | None = None) -> int:
    """``linewatch-producer``: stream one camera into Kafka."""
    parser = argparse.ArgumentParser(description="Stream one camera's frames into Kafka.")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    settings = load_settings(ProducerSettings, "linewatch-producer")
    if settings is None:
        return 2
    stop = stop_event_on_signals()
    metrics = ProducerMetrics()
    sink = BufferedFrameSink(
        KafkaRecordSink(settings.kafka, linger_ms=settings.linger_ms),
        settings.kafka.frames_topic, capacity=settings.buffer_max_frames,
        send_batch=settings.send_batch,
        send_timeout_s=settings.kafka.request_timeout_ms / 1000.0,
        on_sent=lambda n: metrics.sent.inc(n), on_dropped=lambda n: metrics.dropped.inc(n),
        on_buffered=lambda n: metrics.buffered.set(n))
    producer = CameraProducer(
        lambda: open_source(settings.source), sink, camera_id=settings.camera_id,
        product_line=settings.product_line, encoding=settings.encoding,
        jpeg_quality=settings.jpeg_quality, fps_limit=settings.fps_limit, loop=settings.loop,
        max_frames=settings.max_frames, resize_to=settings.resize_to,
        reconnect_initial_s=settings.reconnect_initial_s,
        reconnect_max_s=settings.reconnect_max_s, metrics=metrics)
    server = None
    if settings.http.enabled:
        server = HealthServer(metrics.registry, lambda: sink.fatal_error is None,
                              lambda: sink.connected, settings.http.host,
                              settings.http.port).start()
    try:  # a missing topic or refused credentials end the process here, clearly
        if not wait_for_topics(settings.kafka, [settings.kafka.frames_topic], stop):
            return 0
    except ConfigurationError as error:
        print(f"linewatch-producer: {error}", file=sys.stderr)
        if server is not None:
            server.stop()
        return 1
    sink.start()
    try:
        producer.run(stop)
    except (OSError, LinewatchError) as error:
        print(f"linewatch-producer: {error}", file=sys.stderr)
        sink.close(drain_timeout_s=5.0)
        return 1
    finally:
        metrics.buffered.set(sink.buffered)
    left = sink.close(drain_timeout_s=30.0)
    if server is not None:
        server.stop()
    if sink.fatal_error is not None:
        print(f"linewatch-producer: {sink.fatal_error}", file=sys.stderr)
        return 1
    if left:
        logger.error("%d frame(s) could not be sent before exit", left)
    logger.info("sent %d, dropped %d", sink.sent, sink.dropped)
    return 0 if not isinstance(sink.fatal_error, ConfigurationError) else 1


if __name__ == "__main__":
    sys.exit(main())
