"""End to end through real tansu and real Redis with real SimpleNet models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from kafka import KafkaConsumer

from devtools.synthetic import SyntheticFrame, frame_sequence, write_video
from pipeline.kafka.buffer import BufferedFrameSink
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.model_store import ModelStore
from pipeline.observability import metric_total
from pipeline.redis.results import RedisResultReader
from pipeline.runtimes import pytorch
from pipeline.wire.codec import encode_image
from pipeline.wire.dead_letters import HEADER_DLQ_OFFSET, HEADER_DLQ_REASON
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import Encoding, FrameMessage
from pipeline.wire.operations import WorkerHealth
from workers.producer.camera import CameraProducer
from workers.producer.sources import open_source

from .conftest import IMAGE_SIZE, LINES

pytestmark = pytest.mark.integration

CAMERAS = {"cam-a": "line-a", "cam-b": "line-b"}


class ListReader:
    live = False

    def __init__(self, frames: list[SyntheticFrame]) -> None:
        self._frames = iter(frames)

    def read(self):
        frame = next(self._frames, None)
        return None if frame is None else frame.image

    def close(self) -> None:
        pass


def produce(wiring, camera: str, open_reader, fps: float | None = None) -> list[FrameMessage]:
    sent: list[FrameMessage] = []
    sink = BufferedFrameSink(KafkaRecordSink(wiring.kafka()), wiring.frames_topic).start()
    producer = CameraProducer(open_reader, sink, camera_id=camera,
                              product_line=CAMERAS[camera], fps_limit=fps,
                              on_frame=sent.append)
    producer.run(threading.Event())
    assert sink.close(drain_timeout_s=20) == 0
    assert sink.dropped == 0
    return sent


def reader_for(wiring) -> RedisResultReader:
    return RedisResultReader(redis.Redis.from_url(wiring.redis_url), RedisKeys(wiring.prefix))


def wait_for_results(wiring, expected: int, timeout: float = 120.0) -> RedisResultReader:
    reader = reader_for(wiring)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(reader.stream_length(line) for line in LINES) >= expected:
            break
        time.sleep(0.2)
    return reader


def test_two_cameras_two_lines_exactly_one_result_each_in_order(wiring, start_worker, tmp_path):
    per_camera = 20
    sequences = {cam: frame_sequence(per_camera, IMAGE_SIZE, defect_every=5, seed=10 + i)
                 for i, cam in enumerate(CAMERAS)}
    video = write_video(sequences["cam-a"], tmp_path / "cam-a.avi")
    start_worker(wiring.worker_settings("w-1"))
    sent = {
        "cam-a": produce(wiring, "cam-a", lambda: open_source(str(video))),
        "cam-b": produce(wiring, "cam-b", lambda: ListReader(sequences["cam-b"])),
    }
    total = sum(len(v) for v in sent.values())
    assert total == 2 * per_camera
    reader = wait_for_results(wiring, total)
    store = ModelStore(wiring.store, loader=pytorch.loader())
    for camera, line in CAMERAS.items():
        results = [r for r in reader.results(line) if r.camera_id == camera]
        ids = [r.frame_id for r in results]
        assert ids == [f.frame_id for f in sent[camera]], "one result per frame, in order"
        assert all(r.model_version == store.current_version(line) for r in results)
        # the worker's verdicts are the model's verdicts on the same decoded frames
        images = [cv2.cvtColor(cv2.imdecode(np.frombuffer(f.payload, np.uint8), 1),
                               cv2.COLOR_BGR2RGB) for f in sent[camera]]
        bare = store.get(line).predict(images)
        np.testing.assert_allclose([r.normalized_score for r in results],
                                   bare.normalized_scores, rtol=1e-3, atol=1e-3)
        assert [r.label for r in results] == bare.labels.tolist()
        defect = np.array([f.defect is not None for f in sequences[camera]])
        scores = np.array([r.normalized_score for r in results])
        assert scores[defect].mean() > scores[~defect].mean()
        scratch = np.array([f.defect == "scratch" for f in sequences[camera]])
        assert all(r.label for r, s in zip(results, scratch, strict=True) if s), \
            "every frame with an injected scratch is flagged"
        alerts = {r.frame_id for r in reader.alerts(line)}
        assert alerts == {r.frame_id for r in results if r.label}
        last = results[-1]
        assert reader.latest(camera).frame_id == last.frame_id
        assert reader.heatmap(camera, last.frame_id).startswith(b"\x89PNG")
    print(f"frames produced {total}, results stored {sum(reader.stream_length(x) for x in LINES)}")


def test_two_workers_share_the_partitions(wiring, start_worker):
    first = start_worker(wiring.worker_settings("w-1"))
    second = start_worker(wiring.worker_settings("w-2"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
            first.worker.ready and second.worker.ready
            and len(first.worker._source.assignment()) + len(second.worker._source.assignment())
            == 4 and first.worker._source.assignment() and second.worker._source.assignment()):
        time.sleep(0.2)
    a, b = first.worker._source.assignment(), second.worker._source.assignment()
    assert a and b and not a & b and len(a | b) == 4
    sent = []
    for i, camera in enumerate(["cam-a", "cam-b"] * 3):
        seq = frame_sequence(6, IMAGE_SIZE, defect_every=0, seed=50 + i)
        sent += produce(wiring, camera, lambda s=seq: ListReader(s))
    reader = wait_for_results(wiring, len(sent))
    results = reader.results("line-a") + reader.results("line-b")
    assert sorted((r.camera_id, r.frame_id) for r in results) == sorted(
        (f.camera_id, f.frame_id) for f in sent)
    assert {r.worker_id for r in results} == {"w-1", "w-2"}


def _spawn_worker(wiring, worker_id: str) -> subprocess.Popen:
    env = {**os.environ, **wiring.env(worker_id),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "workers.inference", "--log-level", "WARNING"],
                            env=env)


def test_worker_sigkill_mid_stream_then_restart_loses_nothing(wiring):
    frames = frame_sequence(60, IMAGE_SIZE, defect_every=0, seed=7)
    process = _spawn_worker(wiring, "victim")
    try:
        sent = produce(wiring, "cam-a", lambda: ListReader(frames))
        reader = reader_for(wiring)
        deadline = time.monotonic() + 90
        while reader.stream_length("line-a") < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        stored_before = reader.stream_length("line-a")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert 0 < stored_before < len(sent), "killed mid-stream"
        process = _spawn_worker(wiring, "restarted")
        reader = wait_for_results(wiring, len(sent), timeout=120)
        results = reader.results("line-a")
        print(f"frames produced {len(sent)}, results stored {len(results)} "
              f"(before kill {stored_before})")
        assert [r.frame_id for r in results] == [f.frame_id for f in sent]
        assert {r.worker_id for r in results} == {"victim", "restarted"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, "SIGTERM exits cleanly"


def _bad_records(good: FrameMessage) -> list[tuple[str, bytes | None, bytes | None, list]]:
    h = dict(good.headers())

    def headers(**changes):
        out = {**h, **{k.replace("_", "-"): v for k, v in changes.items()}}
        return [(k, v) for k, v in out.items() if v is not None]

    tiny = encode_image(np.zeros((8, 8, 3), np.uint8))
    return [
        ("empty_payload", b"cam-a", b"", headers()),
        ("undecodable_payload", b"cam-a", b"\xff\xd8\xff\xe0 not really a jpeg" * 4, headers()),
        ("undecodable_payload", b"cam-a", good.payload[: len(good.payload) // 3], headers()),
        ("missing_headers", b"cam-a", good.payload, []),
        ("missing_headers", b"cam-a", good.payload, headers(lw_width=None)),
        ("unknown_schema_version", b"cam-a", good.payload, headers(lw_schema=b"2")),
        ("invalid_headers", b"cam-a", good.payload, headers(lw_encoding=b"webp")),
        ("invalid_headers", b"cam-a", good.payload, headers(lw_frame_id=b"bad id/with slash")),
        ("key_mismatch", b"cam-zzz", good.payload, headers()),
        ("unknown_product_line", b"cam-a", good.payload, headers(lw_line=b"line-nobody")),
        ("image_too_small", b"cam-a", tiny, headers(lw_width=b"8", lw_height=b"8")),
        ("image_too_large", b"cam-a", good.payload, headers(lw_width=b"9000")),
        ("size_mismatch", b"cam-a", good.payload, headers(lw_width=b"64")),
        ("message_too_large", b"cam-a", good.payload + b"\0" * 300_000, headers()),
    ]


def test_bad_input_goes_to_dead_letters_and_good_frames_get_results(wiring, start_worker):
    # one record limit for the worker and its dead letters: the 300 kB record is refused
    # and its dead letter carries its digest and size instead of its bytes
    running = start_worker(wiring.worker_settings(
        "w-bad", kafka=wiring.kafka().model_copy(update={"max_message_bytes": 200_000}),
        health_interval_s=0.2))
    frames = frame_sequence(len(_bad_records(FrameMessage("c", "l", "f", 1, Encoding.JPEG,
                                                          1, 1, b"x"))) + 1,
                            IMAGE_SIZE, defect_every=0, seed=3)
    goods = [FrameMessage("cam-a", "line-a", f"good-{i:04d}", time.time(), Encoding.JPEG,
                          IMAGE_SIZE, IMAGE_SIZE, encode_image(f.image))
             for i, f in enumerate(frames)]
    bad = _bad_records(goods[0])
    sink = KafkaRecordSink(wiring.kafka(), max_request_size=2_000_000)
    offsets = {}
    records = []
    for i, good in enumerate(goods):
        records.append(("good", good.key, good.payload, good.headers()))
        if i < len(bad):
            records.append(bad[i])
    for reason, key, value, headers in records:
        # key = camera so everything stays on one partition, in order
        metadata = sink.send(wiring.frames_topic, key, value, headers).get(timeout=10)
        if reason != "good":
            offsets[metadata.offset] = (reason, None if reason == "message_too_large" else value)
    sink.close()
    reader = wait_for_results(wiring, len(goods), timeout=60)
    stored = [r.frame_id for r in reader.results("line-a")]
    assert stored == [g.frame_id for g in goods]
    consumer = KafkaConsumer(wiring.dlq_topic, bootstrap_servers=wiring.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=2000,
                             fetch_max_wait_ms=20)
    letters = {}
    deadline = time.monotonic() + 30
    while len(letters) < len(bad) and time.monotonic() < deadline:
        for message in consumer:
            h = dict(message.headers)
            assert h["lw-dlq-topic"].decode() == wiring.frames_topic
            letters[int(h[HEADER_DLQ_OFFSET])] = (h[HEADER_DLQ_REASON].decode(), message.value)
    consumer.close()
    assert letters == offsets, "each bad record: its reason, its offset, its original bytes"
    assert len({reason for reason, _ in offsets.values()}) >= 10
    assert running.thread.is_alive() and running.worker.alive, "the worker never stopped"
    assert metric_total(running.worker.metrics.registry,
                        "linewatch_worker_dead_letters_total") == len(bad)
    # the console's view of this worker: its health record in Redis
    client = redis.Redis.from_url(wiring.redis_url)
    deadline = time.monotonic() + 10
    health = None
    while time.monotonic() < deadline:
        raw = client.get(RedisKeys(wiring.prefix).health("w-bad"))
        health = raw and WorkerHealth.from_json(raw)
        if health and sum(health.dead_letters.values()) == len(bad):
            break
        time.sleep(0.1)
    client.close()
    assert health is not None and sum(health.dead_letters.values()) == len(bad), health
    assert set(health.models) == {"line-a"} and health.lag_total == 0
    assert health.dead_letters.keys() == {reason for reason, _ in offsets.values()}
    print(f"frames produced {len(goods)} good + {len(bad)} bad; results {len(stored)}; "
          f"dead letters {len(letters)}")


def test_alert_subscriber_acknowledges_and_resumes(wiring):
    from pipeline.redis.results import RedisResultSink
    from pipeline.settings import RedisSettings
    from pipeline.wire.messages import ResultMessage, StoredResult, Timings
    from workers.alert_subscriber.subscriber import AlertSubscriber

    client = redis.Redis.from_url(wiring.redis_url)
    keys = RedisKeys(wiring.prefix)
    sink = RedisResultSink(RedisSettings(url=wiring.redis_url, key_prefix=wiring.prefix))

    def alert(i):
        return StoredResult(ResultMessage(f"f{i}", "cam-a", "line-a", time.time(), 1.0, 0.9,
                                          True, "v1", Timings(1, 1, 1, 1)))

    assert sink.store([alert(i) for i in range(3)]) == [True] * 3
    assert sink.store([alert(0)]) == [False], "a replay adds no second alert"
    seen = []

    def flaky(a):
        if a.frame_id == "f1" and not any(s == "f1" for s in seen[:-1]):
            seen.append("f1")
            raise RuntimeError("forwarding failed")
        seen.append(a.frame_id)

    first = AlertSubscriber(client, keys, "line-a", "ops", "c1", flaky, block_ms=10)
    with pytest.raises(RuntimeError):
        first.poll()
    # f0 was handled and acknowledged; f1 failed, f2 was delivered but not handled.
    # Restarted: resumes its pending entries (f1, f2), then the new one (f3).
    sink.store([alert(3)])
    second = AlertSubscriber(client, keys, "line-a", "ops", "c1",
                             lambda a: seen.append(a.frame_id), block_ms=10)
    stop = threading.Event()
    thread = threading.Thread(target=second.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while second.handled < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert second.handled == 3
    assert seen == ["f0", "f1", "f1", "f2", "f3"]
    assert client.xpending(keys.alerts("line-a"), "ops")["pending"] == 0
    sink.close()
