"""The camera side's bounded local buffer: frames wait here while the broker is away.

``publish`` never blocks the capture loop. A sender thread drains the buffer to Kafka in
order; when the buffer is full the oldest frame is dropped and counted, never silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.retry import Backoff
from pipeline.wire.dead_letters import record_size
from pipeline.wire.messages import FrameMessage

logger = logging.getLogger(__name__)


class BufferedFrameSink:
    """Camera-side sink: bounded local buffer drained to Kafka by a sender thread.

    ``publish`` never blocks the capture loop. When the broker is unreachable the frames
    wait in the buffer; when the buffer is full the oldest frame is dropped and counted
    (never silently: a warning is logged and ``dropped`` goes up). A batch that fails is
    sent again after a backoff, in order (a frame may reach Kafka twice; the worker's
    writes are idempotent). A frame larger than the record limit is dropped and counted
    before sending (``too_large``): resending it could never succeed and would hold up
    every later frame.

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
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
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
        self.too_large = 0
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

    def _refuse_too_large(self, batch: list[FrameMessage]) -> list[FrameMessage]:
        limit = self._sink.max_request_size
        kept = []
        for frame in batch:
            size = record_size(frame.key, frame.payload, frame.headers())
            if size <= limit:
                kept.append(frame)
                continue
            self.too_large += 1
            logger.error("frame %s of %d bytes exceeds the record limit %d "
                         "(LINEWATCH_KAFKA__MAX_MESSAGE_BYTES): dropped", frame.frame_id,
                         size, limit)
            self.dropped += 1
            self._on_dropped(1)
        if len(kept) != len(batch):
            with self._cond:
                self._in_flight = len(kept)
        return kept

    def _run(self) -> None:
        while True:
            batch = self._refuse_too_large(self._take())
            if not batch:
                if self._closing and not self.buffered:
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
                first_failure = self.connected or self._backoff.fresh
                delay = self._backoff.next_delay()
                if first_failure:
                    logger.warning("broker unreachable (%s); %d frame(s) buffered, retrying "
                                   "in %.1fs", error, self.buffered, delay)
                self.connected = False
                if self._closing and self._drain_deadline < time.monotonic():
                    return
                time.sleep(delay)
                continue
            with self._cond:
                self._in_flight = 0
            if not self.connected:
                logger.info("broker reachable; sending")
            self.connected = True
            self._backoff.reset()
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
