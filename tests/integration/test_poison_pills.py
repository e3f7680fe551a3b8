"""No poison pill: each single bad record of issue 13, against real tansu and real Redis.

One stack for the module (own topics, one in-process worker with the real adapters and a
1 MiB record limit). Each test sends the bad record(s) of one finding, checks that its
dead letter reaches the dead-letter topic with its reason, that the worker is still up,
and that 5 good frames from another camera sent afterwards all get results. The SIGTERM
and readiness test runs a worker process of its own against a redis-server of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.local_stack import create_topics, free_port
from devtools.synthetic import frame_sequence
from pipeline.kafka.dead_letters import KafkaDeadLetterSink, read_dead_letters
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.observability import metric_total
from pipeline.redis.results import RedisResultReader
from pipeline.settings import KafkaSettings
from pipeline.wire.codec import encode_image
from pipeline.wire.dead_letters import (
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_PAYLOAD_BYTES,
    HEADER_DLQ_PAYLOAD_SHA256,
    DeadLetter,
)
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ConsumedRecord, Encoding, FrameMessage, Headers

from .conftest import IMAGE_SIZE, RunningWorker, Wiring
from .test_faults import OwnRedis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
LIMIT = 1024 * 1024  # the module's one record limit (KAFKA__MAX_MESSAGE_BYTES)


@dataclasses.dataclass
class Stack:
    wiring: Wiring
    worker: RunningWorker
    sender: KafkaRecordSink
    reader: RedisResultReader

    @property
    def kafka(self) -> KafkaSettings:
        return self.wiring.kafka().model_copy(update={"max_message_bytes": LIMIT})

    def send(self, key: bytes | None, value: bytes | None, headers: Headers) -> tuple[int, int]:
        metadata = self.sender.send(self.wiring.frames_topic, key, value, headers).get(timeout=20)
        return metadata.partition, metadata.offset

    def send_frame(self, frame: FrameMessage) -> tuple[int, int]:
        return self.send(frame.key, frame.payload, frame.headers())

    def dead_letter(self, origin: tuple[int, int], timeout: float = 60.0) -> DeadLetter:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for letter in read_dead_letters(self.kafka, idle_timeout_ms=300):
                if (int(letter.header(HEADER_DLQ_PARTITION)),
                        int(letter.header(HEADER_DLQ_OFFSET))) == origin:
                    return letter
            time.sleep(0.3)
        raise AssertionError(f"no dead letter for {origin} within {timeout}s")

    def assert_line_keeps_going(self, camera: str) -> None:
        """The worker is up, Redis is up, and 5 good frames of another camera get results."""
        frames = [good_frame(camera, f"ok-{i}", seed=i) for i in range(5)]
        for frame in frames:
            self.send_frame(frame)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(self.reader.result(camera, f.frame_id) is not None for f in frames):
                break
            time.sleep(0.2)
        got = sum(self.reader.result(camera, f.frame_id) is not None for f in frames)
        worker = self.worker.worker
        assert self.worker.thread.is_alive() and worker.fatal_error is None, "worker up"
        assert got == 5, f"{got}/5 good frames of {camera} got results"
        assert metric_total(worker.metrics.registry, "linewatch_worker_redis_up") == 1
        assert worker.ready


def good_frame(camera: str, frame_id: str, seed: int = 0, image=None) -> FrameMessage:
    if image is None:
        image = frame_sequence(1, IMAGE_SIZE, defect_every=0, seed=seed)[0].image
    return FrameMessage(camera, "line-a", frame_id, time.time(), Encoding.JPEG, IMAGE_SIZE,
                        IMAGE_SIZE, encode_image(image))


def _headers(frame: FrameMessage, **changes: bytes) -> Headers:
    names = {k.replace("_", "-"): v for k, v in changes.items()}
    return [(k, names.get(k, v)) for k, v in frame.headers()]


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray((CORPUS / "valid-jpeg.jpg").read_bytes())
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def stack(broker, redis_url, model_store) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:10]
    wiring = Wiring(broker, redis_url, f"frames-pp-{tag}", f"dlq-pp-{tag}", f"group-pp-{tag}",
                    f"lwtest-pp-{tag}", model_store)
    create_topics(broker, {wiring.frames_topic: 2, wiring.dlq_topic: 1})
    settings = wiring.worker_settings(
        "w-poison", kafka=wiring.kafka().model_copy(update={"max_message_bytes": LIMIT}))
    worker = RunningWorker(settings).start()
    sender = KafkaRecordSink(wiring.kafka().model_copy(
        update={"max_message_bytes": 8 * LIMIT}))
    client = redis.Redis.from_url(redis_url)
    built = Stack(wiring, worker, sender, RedisResultReader(client, RedisKeys(wiring.prefix)))
    built.assert_line_keeps_going("cam-warmup")  # joined, model loaded
    yield built
    worker.stop()
    sender.close()
    keys = list(client.scan_iter(f"{wiring.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def test_finding1_a_rejected_frame_over_the_limit_never_jams_the_worker(stack: Stack) -> None:
    frame = good_frame("cam-big", "big-1")
    huge = _jpeg_declaring(8000, 8000) + os.urandom(LIMIT + 300_000)
    over = stack.send(frame.key, huge, _headers(frame, lw_width=b"8000", lw_height=b"8000"))
    under = stack.send(frame.key, _jpeg_declaring(8000, 8000) + os.urandom(400_000),
                       _headers(frame, lw_frame_id=b"big-2", lw_width=b"8000",
                                lw_height=b"8000"))
    letter = stack.dead_letter(over)
    assert letter.reason == "message_too_large"
    assert not letter.value and letter.payload_stripped, "too large: digest and size only"
    assert letter.header(HEADER_DLQ_PAYLOAD_SHA256) == hashlib.sha256(huge).hexdigest()
    assert int(letter.header(HEADER_DLQ_PAYLOAD_BYTES)) == len(huge)
    assert letter.header("lw-frame-id") == "big-1", "original headers kept"
    kept = stack.dead_letter(under)
    assert kept.reason == "image_too_large" and len(kept.value or b"") > 400_000
    print(f"\n[finding 1] {len(huge)} B record -> {letter.reason}, letter without payload "
          f"(sha256 + size); {len(kept.value)} B record -> {kept.reason}, payload kept")
    stack.assert_line_keeps_going("cam-after-1")


def test_finding1_a_letter_refused_as_too_large_is_resent_stripped_or_dropped(
        stack: Stack) -> None:
    """The dead-letter producer's own limit below the letter: resent without payload; a
    letter refused even then is dropped and counted, and flush never blocks."""
    dropped: list[str] = []
    small = KafkaRecordSink(stack.kafka, max_request_size=100_000)
    sink = KafkaDeadLetterSink(small, stack.wiring.dlq_topic, "w-test", LIMIT, dropped.append)
    marker = uuid.uuid4().hex
    big = ConsumedRecord("frames-x", 0, 10**9, b"cam-x", os.urandom(500_000),
                         [("lw-frame-id", marker.encode())], 0.0)
    fat = ConsumedRecord("frames-x", 0, 10**9 + 1, b"cam-x", b"x",
                         [(f"h{i}", b"v" * 4000) for i in range(30)], 0.0)
    try:
        sink.dead_letter(big, "message_too_large", "test")
        sink.dead_letter(fat, "invalid_headers", "test")
        started = time.monotonic()
        sink.flush(10.0)
        took = time.monotonic() - started
    finally:
        small.close()
    assert dropped == ["invalid_headers"] and sink.dropped == 1
    letter = next(d for d in read_dead_letters(stack.kafka, idle_timeout_ms=500)
                  if d.header("lw-frame-id") == marker)
    assert letter.payload_stripped and not letter.value
    print(f"\n[finding 1, sink] resent stripped; dropped {sink.dropped}; flush took {took:.2f}s")
    stack.assert_line_keeps_going("cam-after-1b")


@pytest.mark.parametrize("name,payload", [
    ("jpeg-65000", lambda: _jpeg_declaring(65000, 65000)),
    ("gif-65535", lambda: (CORPUS / "bomb-gif-65535x65535.gif").read_bytes()),
])
def test_finding2_a_tiny_file_declaring_a_huge_image_is_a_dead_letter(stack: Stack, name,
                                                                       payload) -> None:
    frame = good_frame("cam-lie", f"lie-{name}")
    origin = stack.send(frame.key, payload(), _headers(frame, lw_width=b"32",
                                                       lw_height=b"32"))
    letter = stack.dead_letter(origin)
    assert letter.reason == "image_too_large"
    stack.assert_line_keeps_going(f"cam-after-2-{name}")


@pytest.mark.parametrize("bomb,size", [("bomb-jpeg-30000x30000.jpg", b"30000"),
                                       ("bomb-png-20000x20000.png", b"20000")])
@pytest.mark.parametrize("headers_say", ["small", "the truth"])
def test_finding3_decompression_bombs_are_refused_before_decoding(stack: Stack, bomb, size,
                                                                  headers_say) -> None:
    frame = good_frame("cam-bomb", f"bomb-{bomb[5:9]}-{headers_say[:3]}")
    side = IMAGE_SIZE if headers_say == "small" else size
    side = str(side).encode() if isinstance(side, int) else side
    origin = stack.send(frame.key, (CORPUS / bomb).read_bytes(),
                        _headers(frame, lw_width=side, lw_height=side))
    letter = stack.dead_letter(origin)
    assert letter.reason == "image_too_large", letter.header("lw-dlq-detail")
    stack.assert_line_keeps_going(f"cam-after-3-{bomb[5:9]}-{headers_say[:3]}")


def test_finding5_capture_time_outside_the_window_and_latest_never_pinned(
        stack: Stack) -> None:
    frame = good_frame("cam-time", "t-1")
    origin = stack.send(frame.key, frame.payload, _headers(frame, lw_capture_ts=b"1e308"))
    assert stack.dead_letter(origin).reason == "capture_time_out_of_window"
    # a "latest" pinned before this fix (capture time 1e308) is replaced by a good frame
    keys = RedisKeys(stack.wiring.prefix)
    pinned = json.loads(good_result_json("cam-pin", 1e308))
    stack.reader.client.set(keys.latest("cam-pin"), json.dumps(pinned))
    fresh = good_frame("cam-pin", "p-1")
    stack.send_frame(fresh)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        latest = stack.reader.latest("cam-pin")
        if latest is not None and latest.frame_id == "p-1":
            break
        time.sleep(0.2)
    assert stack.reader.latest("cam-pin").frame_id == "p-1", "latest is not pinned"
    stack.assert_line_keeps_going("cam-after-5")


def good_result_json(camera: str, capture_ts: float) -> str:
    from pipeline.wire.messages import ResultMessage, Timings
    return ResultMessage("pinned", camera, "line-a", capture_ts, 0.1, 0.1, False, "v0",
                         Timings(0, 0, 0, 1)).to_json()


def test_finding6_a_reused_frame_id_with_new_content_is_a_new_frame_and_alerts(
        stack: Stack) -> None:
    sequence = frame_sequence(3, IMAGE_SIZE, defect_every=1, seed=61)
    scratch = next(f.image for f in sequence if f.defect == "scratch")
    first = good_frame("cam-reuse", "r-1", seed=62)
    reused = good_frame("cam-reuse", "r-1", image=scratch)
    for frame in (first, reused, first):  # the last one: a true replay
        stack.send_frame(frame)
    deadline = time.monotonic() + 60
    results = []
    while time.monotonic() < deadline:
        results = [r for r in stack.reader.results("line-a") if r.camera_id == "cam-reuse"]
        if len(results) >= 2:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the replay is processed too
    results = [r for r in stack.reader.results("line-a") if r.camera_id == "cam-reuse"]
    alerts = {r.frame_id for r in stack.reader.alerts("line-a") if r.camera_id == "cam-reuse"}
    print(f"\n[finding 6] results {[(r.frame_id, r.label) for r in results]}, alerts {alerts}")
    assert [r.frame_id for r in results][:1] == ["r-1"] and len(results) == 2
    assert results[1].frame_id.startswith("r-1.") and results[1].content_digest
    assert results[1].label, "the scratch is judged anomalous"
    assert {r.frame_id for r in results if r.label} <= alerts, "every anomaly alerts"
    stack.assert_line_keeps_going("cam-after-6")


def test_finding7_ids_with_a_trailing_newline_are_refused(stack: Stack) -> None:
    frame = good_frame("camNL", "nl-1")
    origins = [
        stack.send(b"camNL\n", frame.payload, _headers(frame, lw_camera=b"camNL\n")),
        stack.send(frame.key, frame.payload, _headers(frame, lw_frame_id=b"nl-1\n")),
    ]
    for origin in origins:
        assert stack.dead_letter(origin).reason == "invalid_headers"
    stack.assert_line_keeps_going("cam-after-7")
    assert not [c for c in stack.reader.cameras("line-a") if "\n" in c]


def test_finding8_the_producer_sends_what_the_topics_accept(stack: Stack) -> None:
    """The producer's limit is the shared setting (8 MiB by default), not kafka-python's
    1 MiB: a 2 MB frame is acknowledged at once; this worker (1 MiB) dead-letters it."""
    producer_kafka = stack.wiring.kafka()
    sink = KafkaRecordSink(producer_kafka)
    assert sink.options["max_request_size"] == producer_kafka.max_message_bytes == 8 * LIMIT
    frame = good_frame("cam-2mb", "two-mb")
    payload = frame.payload + os.urandom(2_000_000)
    try:
        sink.send_all(stack.wiring.frames_topic, [(frame.key, payload, frame.headers())], 20)
    finally:
        sink.close()
    deadline = time.monotonic() + 60
    found = None
    while found is None and time.monotonic() < deadline:
        found = next((d for d in read_dead_letters(stack.kafka, idle_timeout_ms=300)
                      if d.header("lw-frame-id") == "two-mb"), None)
    assert found is not None and found.reason == "message_too_large"
    stack.assert_line_keeps_going("cam-after-8")


def _run_cli(module: str, env: dict[str, str], timeout: float = 90
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module],
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout)


def test_finding8_permanent_kafka_errors_and_bad_urls_fail_clearly(stack: Stack) -> None:
    env = {**stack.wiring.env("w-sasl"), "LINEWATCH_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "LINEWATCH_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
           "LINEWATCH_KAFKA__SASL_USERNAME": "u", "LINEWATCH_KAFKA__SASL_PASSWORD": "pw-secret",
           "LINEWATCH_KAFKA__REQUEST_TIMEOUT_MS": "3000"}
    started = time.monotonic()
    sasl = _run_cli("workers.inference", env)
    took = time.monotonic() - started
    last = sasl.stderr.strip().splitlines()[-1]
    print(f"\n[unsupported SASL mechanism] exit {sasl.returncode} after {took:.1f}s: {last}")
    assert sasl.returncode == 1
    assert "refused the connection" in last and "UnsupportedSaslMechanism" in last
    assert "pw-secret" not in sasl.stderr + sasl.stdout
    bad_url = _run_cli("workers.inference", {**stack.wiring.env("w-url"),
                                             "LINEWATCH_REDIS__URL": "http://:pw-secret@h:1"})
    print(f"[bad Redis URL] exit {bad_url.returncode}: {bad_url.stderr.strip()}")
    assert bad_url.returncode == 2 and "redis.url" in bad_url.stderr
    assert "pw-secret" not in bad_url.stderr
    stack.assert_line_keeps_going("cam-after-8b")


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def _metric_line(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_finding4_and_8_sigterm_while_paused_exits_within_the_bound_and_readyz_follows_redis(
        stack: Stack, tmp_path) -> None:
    own = OwnRedis(tmp_path / "redis")
    own.directory.mkdir()
    own.start()
    tag = uuid.uuid4().hex[:8]
    wiring = dataclasses.replace(stack.wiring, redis_url=own.url, frames_topic=f"frames-st-{tag}",
                                 dlq_topic=f"dlq-st-{tag}", group=f"group-st-{tag}")
    create_topics(wiring.bootstrap, {wiring.frames_topic: 1, wiring.dlq_topic: 1})
    port, bound = free_port(), 3.0
    env = {**wiring.env("w-sigterm"), "LINEWATCH_HTTP__ENABLED": "true",
           "LINEWATCH_HTTP__PORT": str(port), "LINEWATCH_SHUTDOWN_TIMEOUT_S": str(bound),
           "LINEWATCH_RETRY_BACKOFF_MAX_S": "1", "LINEWATCH_READINESS_PROBE_S": "0.3",
           "LINEWATCH_BATCHING__MAX_BATCH_SIZE": "1", "LINEWATCH_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "workers.inference"],
                               env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sender = KafkaRecordSink(wiring.kafka())
    try:
        reader = RedisResultReader(redis.Redis.from_url(own.url), RedisKeys(wiring.prefix))
        warm = good_frame("cam-st", "warm")
        sender.send_all(wiring.frames_topic, [(warm.key, warm.payload, warm.headers())], 20)
        assert _wait(lambda: reader.result("cam-st", "warm") is not None, 90), "warmed up"
        assert _wait(lambda: _http(port, "/readyz")[0] == 200, 10)
        own.stop()  # Redis goes away while no frame flows
        assert _wait(lambda: _http(port, "/readyz")[0] == 503, 10), "not ready without Redis"
        assert _metric_line(_http(port, "/metrics")[1], "linewatch_worker_redis_up") == 0
        frames = [good_frame("cam-st", f"st-{i}", seed=i) for i in range(6)]
        sender.send_all(wiring.frames_topic, [(f.key, f.payload, f.headers()) for f in frames],
                        20)
        assert _wait(lambda: _metric_line(_http(port, "/metrics")[1],
                                          "linewatch_worker_paused") == 1, 30), "paused"
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(bound + 30)
        took = time.monotonic() - sent_at
        print(f"\n[finding 4] SIGTERM while paused (Redis down): exit {code} after "
              f"{took:.2f}s (shutdown_timeout_s {bound:g})")
        assert code == 0, process.stderr.read()[-2000:]
        assert took < bound + 5.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        sender.close()
        own.stop()
    stack.assert_line_keeps_going("cam-after-4")
