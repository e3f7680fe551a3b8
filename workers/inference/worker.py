"""Inference worker: Kafka frames -> micro-batches -> model -> Redis, then commit.

Life cycle (visible in the logs): set up, loop until the stop event, tear down.
The batch loop reads like the spec:

1. poll up to ``max_batch_size`` frames, or until the oldest waited ``max_wait_ms``;
2. admit (parse, check, decode) them in a thread pool, bad ones to the dead-letter topic;
   the next batch decodes while the model runs this one, so it never waits on JPEG decode;
3. run each product line's model on its frames, batches in arrival order;
4. hand the batch to the publisher thread, which PNG-encodes the heatmaps (thread pool)
   and writes everything to Redis while the main thread already runs the next batch;
5. commit a batch's offsets only after its results are stored and its dead letters are
   acknowledged (at-least-once; Redis writes are idempotent, so a replay is harmless).

When Redis is unreachable the publisher retries with backoff, the bounded hand-off queue
fills, and the main thread pauses its partitions (staying in the group) until Redis is
back; ``ready`` (``/readyz``) is false while Redis does not answer, also when no frames
flow (the idle publisher pings it). SIGTERM finishes the batch in hand, stores it,
commits and exits, and every wait (the hand-off, Redis and dead-letter retries) gives up
after ``shutdown_timeout_s``: what is not stored by then stays uncommitted and is replayed.

No record can stop the loop: :func:`~workers.inference.admission.admit` makes any failure
a dead letter with a reason, a failed batch is retried frame by frame; only configuration
errors end the process. ``health`` is what the console shows (workers/inference/health.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from pipeline.errors import (
    ConfigurationError,
    FrameError,
    ModelNotFoundError,
    TransportUnavailableError,
)
from pipeline.retry import Backoff, RetryAborted, retry
from pipeline.wire.codec import ImageLimits, encode_heatmap_png, encode_image
from pipeline.wire.messages import (
    ConsumedRecord,
    Encoding,
    ResultMessage,
    StoredResult,
    Timings,
)
from workers.inference.admission import Admitted, CaptureWindow, admit
from workers.inference.batching import DecodingBatch, MicroBatcher, PublishJob
from workers.inference.health import HealthState
from workers.inference.metrics import WorkerMetrics
from workers.inference.ports import DeadLetterSink, FrameSource, ModelProvider, ResultSink

logger = logging.getLogger(__name__)


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
        shutdown_timeout_s: How long a stopping worker keeps waiting for Redis and Kafka
            before it gives up (unstored batches stay uncommitted and are replayed).
        window: Accepted capture times.
        probe_interval_s: How often an idle publisher pings Redis (readiness).
    """

    def __init__(self, source: FrameSource, sink: ResultSink, dead_letters: DeadLetterSink,
                 models: ModelProvider, *, worker_id: str, max_batch_size: int = 8,
                 max_wait_ms: float = 20.0, limits: ImageLimits | None = None,
                 metrics: WorkerMetrics | None = None, decode_threads: int = 2,
                 store_frames: bool = True, retry_backoff_max_s: float = 10.0,
                 shutdown_timeout_s: float = 30.0, window: CaptureWindow | None = None,
                 probe_interval_s: float = 2.0) -> None:
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
        self._jobs: queue.Queue[PublishJob | None] = queue.Queue(maxsize=1)
        self._pending: DecodingBatch | None = None  # decoding while the model runs
        self._done: queue.SimpleQueue[dict[tuple[str, int], int]] = queue.SimpleQueue()
        self._publisher: threading.Thread | None = None
        self._window = window or CaptureWindow()
        self._probe_interval_s = probe_interval_s
        self._stop = threading.Event()
        self._abort = threading.Event()  # set shutdown_timeout_s after the stop
        self._abort_timer: threading.Timer | None = None
        self._stop_deadline = float("inf")
        self._polling = False
        self._redis_up = True
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

    @property
    def ready(self) -> bool:
        """Consuming, not paused, and Redis answered its last write or ping."""
        return self._polling and self._redis_up and not self._stop.is_set()

    def _set_redis_up(self, up: bool) -> None:
        self._redis_up = up
        self.metrics.redis_up.set(1 if up else 0)

    def _begin_stopping(self) -> None:
        """Start the shutdown clock once: after it, every wait gives up."""
        if self._abort_timer is None:
            self._stop_deadline = time.monotonic() + self._shutdown_timeout_s
            self._abort_timer = threading.Timer(self._shutdown_timeout_s, self._abort.set)
            self._abort_timer.daemon = True
            self._abort_timer.start()

    def step(self) -> None:
        """One turn of the loop: commit what is stored, poll, run a batch when due."""
        self._commit_done()
        now = time.monotonic()
        wait = self._batcher.time_until_ready(now)
        timeout_ms = 100.0 if wait is None else wait * 1000.0
        if self._pending is not None:
            timeout_ms = 0.0  # a decoded batch waits for the model: only take what is there
        room = self._batcher.room()
        if room:
            records = self._source.poll(timeout_ms, room)
            self._polling = True
            for record in records:
                self._batcher.add(record, record.received_monotonic)
            self.metrics.frames_in.inc(len(records))
            lags = self._source.lag()
            self.health.set_lag(lags)
            for (topic, partition), lag in lags.items():
                self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        self._advance(self._batcher.ready(time.monotonic()))

    def _tear_down(self) -> None:
        logger.info("worker %s: stopping within %.0fs; finishing %d frame(s) in hand",
                    self.worker_id, self._shutdown_timeout_s, len(self._batcher))
        self._stop.set()
        self._polling = False
        self._begin_stopping()
        try:
            while ((len(self._batcher) or self._pending) and self.fatal_error is None
                   and not self._abort.is_set()):
                self._advance(len(self._batcher) > 0)
        finally:
            self._hand_over(None)
            if self._publisher is not None:
                self._publisher.join(max(0.1, self._stop_deadline - time.monotonic()) + 1.0)
                if self._publisher.is_alive():
                    logger.error("the publisher did not finish in time; unstored frames "
                                 "stay uncommitted and are replayed")
            self._commit_done()
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            self.alive = False
            logger.info("worker %s: stopped", self.worker_id)

    # ----------------------------------------------------------------- model loop
    def _advance(self, due: bool) -> None:
        """Start decoding the next batch when one is due, then finish the one in decode.

        The following batch decodes in the pool while the model runs the pending one.
        """
        following = self._start_batch(self._batcher.take()) if due else None
        if self._pending is not None:
            self._finish_batch(self._pending)
        self._pending = following

    def _start_batch(self, records: list[ConsumedRecord]) -> DecodingBatch:
        """Start decoding a batch in the pool."""
        decoding = [self._pool.submit(self._admit, record) for record in records]
        return DecodingBatch(records, decoding, time.monotonic())

    def _finish_batch(self, pending: DecodingBatch) -> None:
        """Wait for a batch's decoding, run its models and hand it to the publisher."""
        records, started = pending.records, pending.started
        job = PublishJob()
        for record in records:
            key = (record.topic, record.partition)
            job.next_offsets[key] = max(job.next_offsets.get(key, 0), record.offset + 1)
        decoded: list[Admitted] = []
        for record, future in zip(records, pending.decoding, strict=True):
            outcome = future.result()
            if isinstance(outcome, FrameError):
                self._dead_letter(job, record, outcome)
            else:
                decoded.append(outcome)
        by_line: dict[str, list[Admitted]] = {}
        for item in decoded:
            by_line.setdefault(item.frame.product_line, []).append(item)
        for line, items in by_line.items():
            self._infer_line(job, line, items, started)
        self._submit(job)

    def _admit(self, record: ConsumedRecord) -> Admitted | FrameError:
        return admit(record, self._limits, self._window)

    def _infer_line(
        self, job: PublishJob, line: str, items: list[Admitted], started: float
    ) -> None:
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
        except Exception as error:  # find the frame, spare its batch-mates
            if len(items) > 1:
                logger.error("model of line %s failed on a batch of %d (%s); running its "
                             "frames one by one", line, len(items), error)
                for item in items:
                    self._infer_line(job, line, [item], started)
                return
            logger.error("model of line %s failed on one frame: %s", line, error)
            self._dead_letter(job, items[0].record, FrameError(
                f"inference failed: {type(error).__name__}: {str(error)[:300]}",
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
                content_digest=item.digest,
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

    def _dead_letter(self, job: PublishJob, record: ConsumedRecord, error: FrameError) -> None:
        logger.warning("dead letter %s/%d@%d: %s (%s)", record.topic, record.partition,
                       record.offset, error.reason, error)
        self._dead_letters.dead_letter(record, error.reason, str(error))
        self.metrics.dead_letters.labels(reason=error.reason).inc()
        self.health.dead_letter(error.reason)
        job.dead_letters += 1

    def _submit(self, job: PublishJob) -> None:
        """Hand a job to the publisher; while it is stuck, pause and keep the membership.

        A stop starts the shutdown clock; when it runs out the job is left unstored (its
        offsets stay uncommitted, so it is replayed).
        """
        paused = False
        while True:
            try:
                self._jobs.put(job, timeout=0.05)
                break
            except queue.Full:
                if self._stop.is_set():
                    self._begin_stopping()
                    if self._abort.is_set():
                        logger.error("stopping: a batch of %d result(s) was not handed to "
                                     "the publisher in time; it will be replayed",
                                     len(job.results))
                        return
                    continue
                if not paused:
                    logger.warning("publisher is behind (Redis down?); pausing consumption")
                    self._source.pause()
                    self.metrics.paused.set(1)
                    self._polling = False
                    self.health.set_paused(True)
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
            self._polling = True
            self.health.set_paused(False)

    def _hand_over(self, job: PublishJob | None) -> None:
        """Put a job (or the end marker) on the queue, giving up once the clock ran out."""
        while not self._abort.is_set():
            try:
                self._jobs.put(job, timeout=0.05)
                return
            except queue.Full:
                continue

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
        while not self._abort.is_set():
            try:
                job = self._jobs.get(timeout=self._probe_interval_s)
            except queue.Empty:
                try:
                    self._set_redis_up(self._sink.ping())
                except ConfigurationError as error:
                    logger.error("permanent error: %s", error)
                    self.fatal_error = error
                    return
                continue
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
            except Exception as error:  # a bug: exit 1 instead of hanging
                if self._abort.is_set():  # torn down under it at the end of a stop
                    logger.warning("publisher stopped at shutdown: %s", error)
                    return
                logger.exception("the publisher failed")
                self.fatal_error = error
                return
            self._done.put(job.next_offsets)

    def _publish(self, job: PublishJob) -> bool:
        """Store a job (retrying while Redis is down); False when a stop gave up on it."""
        pngs = list(self._pool.map(encode_heatmap_png, job.heatmaps))
        jpegs = list(self._pool.map(_as_jpeg, job.frame_jpegs))

        def store() -> tuple[list[StoredResult], list[bool]]:
            stored_ts = time.time()
            items = [StoredResult(replace(r, stored_ts=stored_ts), png, jpeg)
                     for r, png, jpeg in zip(job.results, pngs, jpegs, strict=True)]
            return items, self._sink.store(items)

        try:
            items, fresh = retry(
                store, retry_on=(TransportUnavailableError,),
                backoff=Backoff(0.1, self._retry_backoff_max_s), what="storing a batch",
                stop=self._abort, on_error=lambda _: self._set_redis_up(False))
            if job.results:  # an empty store proves nothing about Redis
                self._set_redis_up(True)
            if job.dead_letters:
                retry(lambda: self._dead_letters.flush(
                          min(10.0, max(0.5, self._stop_deadline - time.monotonic()))),
                      retry_on=(TransportUnavailableError,),
                      backoff=Backoff(0.1, self._retry_backoff_max_s),
                      what="sending dead letters", stop=self._abort)
        except RetryAborted:
            return False
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
