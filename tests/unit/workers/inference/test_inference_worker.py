import threading

from pipeline.observability import metric_total
from pipeline.wire.messages import ConsumedRecord
from tests.twins import (
    BrightSpotDetector,
    TwinDeadLetters,
    TwinModels,
    TwinSink,
    TwinSource,
    as_record,
    make_frame,
)
from workers.inference.worker import InferenceWorker


def _worker(source, sink, letters, models, **kwargs):
    return InferenceWorker(source, sink, letters, models, worker_id="w1",
                           retry_backoff_max_s=0.05, **kwargs)


def _run_until(worker, condition, timeout=10.0):
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = __import__("time").monotonic() + timeout
    while not condition() and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.01)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def _stream(n_per_camera=6):
    records, spots = [], set()
    for i in range(n_per_camera):
        for partition, (camera, line) in enumerate([("cam-a", "line-a"), ("cam-b", "line-b")]):
            spot = i % 3 == 2
            frame = make_frame(camera, line, i, spot=spot)
            if spot:
                spots.add((camera, frame.frame_id))
            records.append(as_record(frame, partition, i))
    return records, spots


def test_every_frame_gets_one_result_and_offsets_follow_stores():
    records, spots = _stream()
    source, sink, letters = TwinSource(list(records)), TwinSink(), TwinDeadLetters()
    models = TwinModels(**{"line-a": BrightSpotDetector("line-a"),
                           "line-b": BrightSpotDetector("line-b")})
    worker = _worker(source, sink, letters, models, max_batch_size=4, max_wait_ms=5)
    _run_until(worker, lambda: len(sink.stored) == len(records))
    assert len(sink.stored) == len(records) == 12
    assert not letters.letters
    flagged = {key for key, item in sink.stored.items() if item.result.label}
    assert flagged == spots
    for camera in ("cam-a", "cam-b"):
        ids = [fid for cam, fid in sink.order if cam == camera]
        assert ids == sorted(ids)
    assert source.committed == {("frames", 0): 6, ("frames", 1): 6}
    assert max(max(models.models["line-a"].calls), max(models.models["line-b"].calls)) <= 4
    item = next(iter(sink.stored.values()))
    assert item.heatmap_png.startswith(b"\x89PNG")
    assert item.frame_jpeg.startswith(b"\xff\xd8")
    registry = worker.metrics.registry
    assert metric_total(registry, "linewatch_worker_frames_out_total") == 12
    assert metric_total(registry, "linewatch_worker_latency_seconds_count") == 12


def test_bad_records_go_to_dead_letters_and_good_ones_still_get_results():
    good = [as_record(make_frame("cam", "line-a", i), 0, i * 2) for i in range(4)]
    ok = make_frame("cam", "line-a", 99)
    bad = [
        ConsumedRecord("frames", 0, 1, b"cam", b"", ok.headers(), 0.0),
        ConsumedRecord("frames", 0, 3, b"cam", b"\xff\xd8junk", ok.headers(), 0.0),
        ConsumedRecord("frames", 0, 5, b"cam", ok.payload, [], 0.0),
        as_record(make_frame("cam", "no-model-line", 5), 0, 7),
    ]
    records = sorted(good + bad, key=lambda r: r.offset)
    source, sink, letters = TwinSource(records), TwinSink(), TwinDeadLetters()
    worker = _worker(source, sink, letters,
                     TwinModels(**{"line-a": BrightSpotDetector("line-a")}),
                     max_batch_size=3, max_wait_ms=1)
    _run_until(worker, lambda: source.committed.get(("frames", 0)) == 8)
    assert len(sink.stored) == 4
    reasons = sorted(reason for _, reason, _ in letters.letters)
    assert reasons == ["empty_payload", "missing_headers", "undecodable_payload",
                       "unknown_product_line"]
    assert letters.flushed >= 1
    assert metric_total(worker.metrics.registry, "linewatch_worker_dead_letters_total") == 4
    # what the console shows of this worker (its health record)
    health, stored = worker.health.snapshot("w1", 0.0)
    assert stored == 4 and health.models == {"line-a": "v1"}
    assert health.dead_letters == {"empty_payload": 1, "missing_headers": 1,
                                   "undecodable_payload": 1, "unknown_product_line": 1}
    assert health.no_model == {"no-model-line": ["cam"]}
    assert health.lag == {"frames/0": 0} and not health.paused
    assert worker.health.snapshot("w1", 0.0)[0].no_model == {}, "reported for one interval"


def test_redis_outage_pauses_consumption_commits_nothing_then_resumes():
    records, _ = _stream(n_per_camera=8)
    source, letters = TwinSource(list(records)), TwinDeadLetters()
    sink = TwinSink(fail_times=6)
    models = TwinModels(**{"line-a": BrightSpotDetector("line-a"),
                           "line-b": BrightSpotDetector("line-b")})
    worker = _worker(source, sink, letters, models, max_batch_size=2, max_wait_ms=1)
    commits_while_down = []

    def done():
        if sink.fail_times > 0:
            commits_while_down.append(len(source.commit_log))
        return len(sink.stored) == len(records)

    _run_until(worker, done)
    assert len(sink.stored) == 16
    assert source.pause_count >= 1
    assert set(commits_while_down) == {0}
    assert source.committed == {("frames", 0): 8, ("frames", 1): 8}


def test_stop_finishes_the_batch_in_hand_and_commits_it():
    records = [as_record(make_frame("cam", "line-a", i), 0, i) for i in range(3)]
    source, sink, letters = TwinSource(list(records)), TwinSink(), TwinDeadLetters()
    # a batch of 8 with a long wait: the 3 frames would wait 60 s without the stop
    worker = _worker(source, sink, letters,
                     TwinModels(**{"line-a": BrightSpotDetector("line-a")}),
                     max_batch_size=8, max_wait_ms=60_000)
    _run_until(worker, lambda: not source.records, timeout=5)
    assert len(sink.stored) == 3
    assert source.committed == {("frames", 0): 3}
    assert not worker.alive


def test_replayed_frames_are_counted_not_duplicated():
    frame = make_frame("cam", "line-a", 1)
    records = [as_record(frame, 0, 0), as_record(frame, 0, 1)]
    source, sink, letters = TwinSource(records), TwinSink(), TwinDeadLetters()
    worker = _worker(source, sink, letters,
                     TwinModels(**{"line-a": BrightSpotDetector("line-a")}),
                     max_batch_size=1, max_wait_ms=0)
    _run_until(worker, lambda: source.committed.get(("frames", 0)) == 2)
    assert len(sink.order) == 1
    assert metric_total(worker.metrics.registry, "linewatch_worker_replayed_total") == 1


class SlowDetector(BrightSpotDetector):
    """Takes 0.15 s per call and notes when each call ends."""

    def __init__(self, line):
        super().__init__(line)
        self.ended: list[float] = []

    def predict(self, images):
        __import__("time").sleep(0.15)
        result = super().predict(images)
        self.ended.append(__import__("time").monotonic())
        return result


def test_the_next_batch_decodes_while_the_model_runs():
    records = [as_record(make_frame("cam", "line-a", i), 0, i) for i in range(8)]
    source, sink, letters = TwinSource(list(records)), TwinSink(), TwinDeadLetters()
    model = SlowDetector("line-a")
    worker = _worker(source, sink, letters, TwinModels(**{"line-a": model}),
                     max_batch_size=2, max_wait_ms=1)
    decode_started: dict[int, float] = {}
    decode = worker._admit

    def noting_decode(record):
        decode_started[record.offset] = __import__("time").monotonic()
        return decode(record)

    worker._admit = noting_decode
    _run_until(worker, lambda: len(sink.stored) == len(records))
    assert model.calls == [2, 2, 2, 2]
    # batch k+1 (offsets 2k+2, 2k+3) started decoding before the model finished batch k
    for k in range(3):
        assert decode_started[2 * k + 2] < model.ended[k]
    assert source.committed == {("frames", 0): 8}
    assert [fid for _, fid in sink.order] == [f"f{i:06d}" for i in range(8)]
