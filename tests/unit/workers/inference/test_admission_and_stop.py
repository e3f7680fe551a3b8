"""Per-record isolation, the capture window, ids matched whole, a bounded stop, readiness."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.errors import FrameError
from pipeline.wire.codec import ImageLimits
from pipeline.wire.messages import HEADER_CAPTURE_TS, ConsumedRecord, FrameMessage
from tests.twins import (
    BrightSpotDetector,
    TwinDeadLetters,
    TwinModels,
    TwinSink,
    TwinSource,
    as_record,
    make_frame,
)
from workers.inference.admission import Admitted, CaptureWindow, admit
from workers.inference.settings import PIPELINE_DEPTH, WorkerSettings
from workers.inference.worker import InferenceWorker


def _with_header(record: ConsumedRecord, name: str, value: bytes) -> ConsumedRecord:
    headers = [(k, value if k == name else v) for k, v in record.headers]
    return ConsumedRecord(record.topic, record.partition, record.offset, record.key,
                          record.value, headers, record.received_monotonic)


@pytest.mark.parametrize("capture_ts", [b"1e308", b"-5", b"inf", b"0", b"4102444800"])
def test_capture_times_outside_the_window_are_refused(capture_ts: bytes) -> None:
    record = _with_header(as_record(make_frame("cam", "line-a", 1), 0, 0), HEADER_CAPTURE_TS,
                          capture_ts)
    outcome = admit(record, ImageLimits(), CaptureWindow(3600.0, 60.0))
    assert isinstance(outcome, FrameError)
    assert outcome.reason in {"capture_time_out_of_window", "invalid_headers"}
    if capture_ts in (b"1e308", b"0", b"4102444800"):
        assert outcome.reason == "capture_time_out_of_window"


def test_a_frame_in_the_window_is_admitted_with_its_content_digest() -> None:
    frame = make_frame("cam", "line-a", 1)
    outcome = admit(as_record(frame, 0, 0), ImageLimits(), CaptureWindow())
    assert isinstance(outcome, Admitted)
    assert len(outcome.digest) == 32 and outcome.image.shape == (32, 32, 3)


@pytest.mark.parametrize("header", ["lw-camera", "lw-frame-id", "lw-line"])
def test_ids_with_a_trailing_newline_are_refused(header: str) -> None:
    frame = make_frame("camNL", "line-a", 1)
    record = as_record(frame, 0, 0)
    value = dict(record.headers)[header] + b"\n"
    bad = _with_header(record, header, value)
    if header == "lw-camera":
        bad = ConsumedRecord(bad.topic, 0, 0, value, bad.value, bad.headers, 0.0)
    outcome = admit(bad, ImageLimits(), CaptureWindow())
    assert isinstance(outcome, FrameError) and outcome.reason == "invalid_headers"


def test_an_unexpected_exception_becomes_an_internal_error_dead_letter() -> None:
    """A header value that is not bytes (a broken client library) is no crash."""
    record = as_record(make_frame("cam", "line-a", 1), 0, 0)
    broken = ConsumedRecord(record.topic, 0, 0, record.key, record.value,
                            [(k, 7 if k == "lw-line" else v) for k, v in record.headers], 0.0)
    outcome = admit(broken, ImageLimits(), CaptureWindow())
    assert isinstance(outcome, FrameError)
    assert outcome.reason == "internal_error:AttributeError"


def test_a_model_failing_on_one_frame_spares_its_batch_mates() -> None:
    class PickyDetector(BrightSpotDetector):
        def predict(self, images):
            if any(image.max() == 255 for image in images):
                raise MemoryError("this frame breaks the model")
            return super().predict(images)

    records = [as_record(make_frame("cam", "line-a", i, spot=i == 2), 0, i) for i in range(4)]
    source, sink, letters = TwinSource(records), TwinSink(), TwinDeadLetters()
    worker = InferenceWorker(source, sink, letters,
                             TwinModels(**{"line-a": PickyDetector("line-a")}), worker_id="w",
                             max_batch_size=4, max_wait_ms=50, retry_backoff_max_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while source.committed.get(("frames", 0)) != 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert len(sink.stored) == 3
    assert [reason for _, reason, _ in letters.letters] == ["inference_failed"]


def test_sigterm_while_redis_is_down_and_consumption_paused_stops_within_the_bound() -> None:
    records = [as_record(make_frame("cam", "line-a", i), 0, i) for i in range(40)]
    source, sink, letters = TwinSource(records), TwinSink(fail_times=10**9), TwinDeadLetters()
    worker = InferenceWorker(source, sink, letters,
                             TwinModels(**{"line-a": BrightSpotDetector("line-a")}),
                             worker_id="w", max_batch_size=2, max_wait_ms=1,
                             retry_backoff_max_s=5.0, shutdown_timeout_s=1.0,
                             probe_interval_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while not source.paused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.paused, "the hand-off filled and consumption paused"
    assert not worker.ready, "not ready while Redis is down"
    stopped_at = time.monotonic()
    stop.set()
    thread.join(10)
    took = time.monotonic() - stopped_at
    print(f"\nstopped {took:.2f}s after the stop event (shutdown_timeout_s 1.0)")
    assert not thread.is_alive() and not worker.alive
    assert took < 1.0 + 1.5
    assert source.committed == {}, "nothing unstored was committed"


def test_readiness_follows_redis_while_idle() -> None:
    sink = TwinSink()
    worker = InferenceWorker(TwinSource([]), sink, TwinDeadLetters(), TwinModels(),
                             worker_id="w", probe_interval_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not worker.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.ready
        sink.fail_times = 10**9  # Redis goes away; no frame is flowing
        deadline = time.monotonic() + 5
        while worker.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not worker.ready
        sink.fail_times = 0
        deadline = time.monotonic() + 5
        while not worker.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.ready
    finally:
        stop.set()
        thread.join(10)


def test_the_memory_bound_in_the_readme_is_the_one_the_settings_give() -> None:
    """README states the bound for the defaults; the codec refuses anything larger."""
    from pathlib import Path

    settings = WorkerSettings(kafka={"bootstrap_servers": "k:9092"},
                              redis={"url": "redis://r:6379/0"}, model_store=Path("/m"))
    bound = settings.memory_bound_bytes()
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    stated = (f"{PIPELINE_DEPTH} x {settings.batching.batch_size('cpu')} x "
              f"{settings.limits.max_pixels:,} px x 3 bytes = {bound / 2**20:,.0f} MiB")
    assert stated in readme, stated
    limits = settings.limits.image_limits(settings.kafka.max_message_bytes)
    side = int(np.sqrt(limits.max_pixels)) + 1
    frame = FrameMessage("cam", "line", "f", time.time(), make_frame("c", "l", 0).encoding,
                         side, side, b"\xff\xd8")
    outcome = admit(ConsumedRecord("t", 0, 0, b"cam", frame.payload, frame.headers(), 0.0),
                    limits, CaptureWindow())
    assert isinstance(outcome, FrameError) and outcome.reason == "image_too_large"
