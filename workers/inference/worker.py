"""Inference worker: Kafka frames -> micro-batches -> model -> Redis, then commit.

Life cycle (visible in the logs): set up, loop until the stop event, tear down.
The batch loop reads like the spec:

1. poll up to ``max_batch_size`` frames, or until the oldest waited ``max_wait_ms``;
2. parse and decode them in a thread pool (bad ones go to the dead-letter topic);
3. run each product line's model on its frames under ``torch.inference_mode()``;
4. hand the batch to the publisher thread, which PNG-encodes the heatmaps (thread pool)
   and writes everything to Redis while the main thread already runs the next batch;
5. commit a batch's offsets only after its results are stored and its dead letters are
   acknowledged (at-least-once; Redis writes are idempotent, so a replay is harmless).

When Redis is unreachable the publisher retries with backoff, the bounded hand-off queue
fills, and the main thread pauses its partitions (staying in the group) until Redis is
back. SIGTERM finishes the batch in hand, stores it, commits and exits.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from pipeline.errors import (
    ConfigurationError,
    FrameError,
    ModelNotFoundError,
    TransportUnavailableError,
)
from pipeline.retry import Backoff, RetryAborted, retry
from pipeline.runtimes import Detector
from pipeline.wire.codec import ImageLimits, decode_frame, encode_heatmap_png, encode_image
from pipeline.wire.messages import (
    ConsumedRecord,
    Encoding,
    FrameMessage,
    ResultMessage,
    StoredResult,
    Timings,
)
from workers.inference.batching import MicroBatcher
from workers.inference.health import HealthState
from workers.inference.metrics import WorkerMetrics

logger = logging.getLogger(__name__)


class FrameSource(Protocol):
    """Where frames come from (a Kafka consumer-group member in production)."""

    def poll(self, timeout_ms: float, max_records: int) -> list[ConsumedRecord]:
        """Up to ``max_records`` records within ``timeout_ms``."""
        ...

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        """Commit (topic, partition) -> next offset."""
        ...

    def pause(self) -> None:
        """Stop fetching, keep the membership."""
        ...

    def resume(self) -> None:
        """Fetch again."""
        ...

    def lag(self) -> Mapping[tuple[str, int], int]:
        """Records behind the end of each assigned (topic, partition)."""
        ...


class ResultSink(Protocol):
    """Where results go (Redis in production)."""

    def store(self, items: Sequence[StoredResult]) -> list[bool]:
        """Store a batch idempotently; raise TransportUnavailableError when down."""
        ...


class DeadLetterSink(Protocol):
    """Where unprocessable frames go (a Kafka topic in production)."""

    def dead_letter(self, record: ConsumedRecord, reason: str, detail: str) -> None:
        """Queue one dead letter."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait until queued dead letters are acknowledged (TransportUnavailableError)."""
        ...


class ModelProvider(Protocol):
    """Gives the current model of a product line."""

    def get(self, line: str) -> Detector:
        """The line's model (ModelNotFoundError when there is none)."""
        ...


@dataclass(slots=True)
class _Decoded:
    record: ConsumedRecord
    frame: FrameMessage
    image: np.ndarray
    decode_ms: float


@dataclass(slots=True)
class _Job:
    """One batch handed from the model loop to the publisher."""

    results: list[ResultMessage] = field(default_factory=list)
    heatmaps: list[np.ndarray] = field(default_factory=list)
    frame_jpegs: list[bytes | np.ndarray] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    dead_letters: int = 0


class InferenceWorker:
    """Consumes frames, runs models in micro-batches, stores results, commits.

    Args:
        source: Frame source.
        sink: Result sink.
        dead_letters: Dead-letter sink.
        models: Model provider.
        worker_id: Name in results and logs.
        max_batch_size: Most frames per model call.
        max_wait_ms: Longest the oldest frame waits for a fuller batch.
        limits: Accepted image bounds.
        metrics: Metrics to update.
        decode_threads: Threads for decoding and PNG encoding.
        store_frames: Also store each frame's JPEG in Redis.
        retry_backoff_max_s: Largest delay between Redis retries.
        shutdown_timeout_s: How long a stopping worker keeps retrying Redis before it
            gives up (unstored batches stay uncommitted and are replayed).
    """

    def __init__(self, source: FrameSource, sink: ResultSink, dead_letters: DeadLetterSink,
                 models: ModelProvider, *, worker_id: str, max_batch_size: int = 8,
                 max_wait_ms: float = 20.0, limits: ImageLimits | None = None,
                 metrics: WorkerMetrics | None = None, decode_threads: int = 2,
                 store_frames: bool = True, retry_backoff_max_s: float = 10.0,
                 shutdown_timeout_s: float = 30.0) -> None:
        self._source = source
        self._sink = sink
        self._dead_letters = dead_letters
        self._models = models
        self.worker_id = worker_id
        self._batcher: MicroBatcher[ConsumedRecord] = MicroBatcher(max_batch_size,
                                                                   max_wait_ms / 1000.0)
        self._limits = limits or ImageLimits()
        self.metrics = metrics or WorkerMetrics()
        self.health = HealthState()
        self._pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="codec")
        self._store_frames = store_frames
        self._retry_backoff_max_s = retry_backoff_max_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self._done: queue.SimpleQueue[dict[tuple[str, int], int]] = queue.SimpleQueue()
        self._publisher: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopping_deadline = float("inf")
        self.ready = False
        self.alive = True
        self.fatal_error: BaseException | None = None

    # ----------------------------------------------------------------- life cycle
    def run(self, stop: threading.Event | None = None) -> None:
        """Set up, loop until ``stop`` is set, tear down (finish, store, commit)."""
        self._stop = stop or self._stop
        logger.info("worker %s: setting up", self.worker_id)
        self._publisher = threading.Thread(target=self._publish_loop, name="publisher",
                                           daemon=True)
        self._publisher.start()
        logger.info("worker %s: running", self.worker_id)
        try:
            while not self._stop.is_set() and self.fatal_error is None:
                self.step()
        finally:
            self._tear_down()

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and exit."""
        self._stop.set()

    def step(self) -> None:
        """One turn of the loop: commit what is stored, poll, run a batch when due."""
        self._commit_done()
        now = time.monotonic()
        wait = self._batcher.time_until_ready(now)
        timeout_ms = 100.0 if wait is None else wait * 1000.0
        room = self._batcher.room()
        if room:
            records = self._source.poll(timeout_ms, room)
            self.ready = True
            for record in records:
                self._batcher.add(record, record.received_monotonic)
            self.metrics.frames_in.inc(len(records))
            lags = self._source.lag()
            self.health.set_lag(lags)
            for (topic, partition), lag in lags.items():
                self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        if self._batcher.ready(time.monotonic()):
            self._run_batch(self._batcher.take())

    def _tear_down(self) -> None:
        logger.info("worker %s: stopping; finishing %d frame(s) in hand", self.worker_id,
                    len(self._batcher))
        self.ready = False
        self._stopping_deadline = time.monotonic() + self._shutdown_timeout_s
        try:
            while len(self._batcher) and self.fatal_error is None:
                self._run_batch(self._batcher.take())
        finally:
            self._jobs.put(None)
            if self._publisher is not None:
                self._publisher.join()
            self._commit_done()
            self._pool.shutdown(wait=True)
            self.alive = False
            logger.info("worker %s: stopped", self.worker_id)

    # ----------------------------------------------------------------- model loop
    def _run_batch(self, records: list[ConsumedRecord]) -> None:
        started = time.monotonic()
        job = _Job()
        for record in records:
            key = (record.topic, record.partition)
            job.next_offsets[key] = max(job.next_offsets.get(key, 0), record.offset + 1)
        decoded: list[_Decoded] = []
        for record, outcome in zip(records, self._pool.map(self._decode, records), strict=True):
            if isinstance(outcome, FrameError):
                self._dead_letter(job, record, outcome)
            else:
                decoded.append(outcome)
        by_line: dict[str, list[_Decoded]] = {}
        for item in decoded:
            by_line.setdefault(item.frame.product_line, []).append(item)
        for line, items in by_line.items():
            self._infer_line(job, line, items, started)
        self._submit(job)

    def _decode(self, record: ConsumedRecord) -> _Decoded | FrameError:
        started = time.perf_counter()
        try:
            size = len(record.value or b"")
            if size > self._limits.max_payload_bytes:
                raise FrameError(f"message of {size} bytes exceeds "
                                 f"{self._limits.max_payload_bytes}", reason="message_too_large")
            frame = FrameMessage.from_record(record.key, record.headers, record.value)
            image = decode_frame(frame, self._limits)
        except FrameError as error:
            return error
        return _Decoded(record, frame, image, (time.perf_counter() - started) * 1000.0)

    def _infer_line(self, job: _Job, line: str, items: list[_Decoded], started: float) -> None:
        try:
            model = self._models.get(line)
        except ModelNotFoundError as error:
            for item in items:
                self.health.missing_model(line, item.frame.camera_id)
                self._dead_letter(job, item.record, error)
            return
        infer_start = time.perf_counter()
        try:
            prediction = model.predict([item.image for item in items])
        except (RuntimeError, ValueError) as error:
            logger.error("model of line %s failed on a batch of %d: %s", line, len(items), error)
            for item in items:
                self._dead_letter(job, item.record,
                                  FrameError(f"inference failed: {error}",
                                             reason="inference_failed"))
            return
        infer_s = time.perf_counter() - infer_start
        self.metrics.batch_size.observe(len(items))
        self.metrics.inference.observe(infer_s)
        version = str(model.metadata.version)
        self.health.served(line, version)
        for index, item in enumerate(items):
            frame = item.frame
            job.results.append(ResultMessage(
                frame_id=frame.frame_id, camera_id=frame.camera_id, product_line=line,
                capture_ts=frame.capture_ts,
                image_score=float(prediction.scores[index]),
                normalized_score=float(prediction.normalized_scores[index]),
                label=bool(prediction.labels[index]), model_version=version,
                timings=Timings(
                    queue_ms=round(max(0.0, (time.time() - frame.capture_ts) * 1000.0
                                       - (time.monotonic() - started) * 1000.0), 3),
                    decode_ms=round(item.decode_ms, 3), infer_ms=round(infer_s * 1000.0, 3),
                    batch_size=len(items)),
                worker_id=self.worker_id,
            ))
            job.heatmaps.append(prediction.heatmaps[index])
            if not self._store_frames:
                job.frame_jpegs.append(b"")
            elif frame.encoding is Encoding.JPEG:
                job.frame_jpegs.append(frame.payload)
            else:
                job.frame_jpegs.append(item.image)

    def _dead_letter(self, job: _Job, record: ConsumedRecord, error: FrameError) -> None:
        logger.warning("dead letter %s/%d@%d: %s (%s)", record.topic, record.partition,
                       record.offset, error.reason, error)
        self._dead_letters.dead_letter(record, error.reason, str(error))
        self.metrics.dead_letters.labels(reason=error.reason).inc()
        self.health.dead_letter(error.reason)
        job.dead_letters += 1

    def _submit(self, job: _Job) -> None:
        """Hand a job to the publisher; while it is stuck, pause and keep the membership."""
        paused = False
        while True:
            try:
                self._jobs.put(job, timeout=0.05)
                break
            except queue.Full:
                if not paused:
                    logger.warning("publisher is behind (Redis down?); pausing consumption")
                    self._source.pause()
                    self.metrics.paused.set(1)
                    self.health.set_paused(True)
                    self.ready = False
                    paused = True
                for record in self._source.poll(50, 1):  # keeps the group membership alive
                    self._batcher.add(record, record.received_monotonic)
                self._commit_done()
                if self.fatal_error is not None:
                    return
        if paused:
            logger.info("publisher caught up; resuming consumption")
            self._source.resume()
            self.metrics.paused.set(0)
            self.health.set_paused(False)
            self.ready = True

    def _commit_done(self) -> None:
        offsets: dict[tuple[str, int], int] = {}
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                break
            for key, offset in done.items():
                offsets[key] = max(offsets.get(key, 0), offset)
        if offsets:
            self._source.commit(offsets)
            self.metrics.commits.inc()

    # ----------------------------------------------------------------- publisher
    def _publish_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if not self._publish(job):
                    logger.error("gave up storing a batch at shutdown; its offsets stay "
                                 "uncommitted and it will be replayed")
                    continue
            except ConfigurationError as error:
                logger.error("permanent error: %s", error)
                self.fatal_error = error
                return
            self._done.put(job.next_offsets)

    def _publish(self, job: _Job) -> bool:
        """Store a job (retrying while Redis is down); False when a stop gave up on it."""
        pngs = list(self._pool.map(encode_heatmap_png, job.heatmaps))
        jpegs = list(self._pool.map(_as_jpeg, job.frame_jpegs))

        def store() -> tuple[list[StoredResult], list[bool]]:
            stored_ts = time.time()
            items = [StoredResult(replace(r, stored_ts=stored_ts), png, jpeg)
                     for r, png, jpeg in zip(job.results, pngs, jpegs, strict=True)]
            fresh = self._sink.store(items)
            if job.dead_letters:
                self._dead_letters.flush(10.0)
            return items, fresh

        try:
            items, fresh = retry(
                store, retry_on=(TransportUnavailableError,),
                backoff=Backoff(0.1, self._retry_backoff_max_s), what="storing a batch",
                give_up=lambda: time.monotonic() > self._stopping_deadline,
                on_error=lambda _: self.metrics.redis_up.set(0))
        except RetryAborted:
            return False
        self.metrics.redis_up.set(1)
        self.health.stored(len(items))
        for item, was_new in zip(items, fresh, strict=True):
            result = item.result
            self.metrics.frames_out.labels(line=result.product_line).inc()
            self.metrics.latency.observe(max(0.0, result.stored_ts - result.capture_ts))
            if result.label:
                self.metrics.anomalies.labels(line=result.product_line).inc()
            if not was_new:
                self.metrics.replays.inc()
        return True


def _as_jpeg(frame: bytes | np.ndarray) -> bytes:
    return frame if isinstance(frame, bytes) else encode_image(frame, Encoding.JPEG, 85)
