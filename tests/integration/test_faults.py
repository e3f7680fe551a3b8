"""Fault tests against real tansu and real Redis: outages, restarts, permanent faults.

Each test prints frames produced vs results stored. The bar: 0 frames lost, every
duplicate idempotent (a line's results stream holds each frame exactly once).
The shared Redis on 6379 and the session broker are never stopped: every test that
stops something starts its own redis-server / tansu on a free port.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from devtools.local_stack import LocalStack, free_port, redis_server_binary, wait_for_port
from devtools.synthetic import frame_sequence
from pipeline.kafka.buffer import BufferedFrameSink
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.observability import metric_total
from pipeline.redis.results import RedisResultReader
from pipeline.settings import KafkaSettings
from pipeline.wire.layout import RedisKeys
from workers.producer.camera import CameraProducer

from .conftest import IMAGE_SIZE, Wiring
from .test_pipeline import ListReader

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class OwnRedis:
    """A redis-server of this test alone, durable (AOF, fsync always), restartable."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None, directory: Path | None = None
              ) -> subprocess.Popen[bytes]:
        binary = redis_server_binary()
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [binary, "--bind", "127.0.0.1", "--port", str(port or self.port),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(directory or self.directory)]
        if self.password:
            args += ["--requirepass", self.password]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port or self.port)
        if port is None:
            self.process = process
        return process

    def kill(self) -> None:
        """SIGKILL: no goodbye; what was acknowledged is in the fsynced AOF."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def own_redis(tmp_path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def _metric(running, name: str) -> float:
    return metric_total(running.worker.metrics.registry, name)


def _stream_ids(url: str, prefix: str, line: str, camera: str = "cam-a") -> list[str]:
    reader = RedisResultReader(redis.Redis.from_url(url), RedisKeys(prefix))
    return [r.frame_id for r in reader.results(line) if r.camera_id == camera]


def _stored_at_crash(server: OwnRedis, prefix: str, line: str) -> list[str]:
    """What the killed Redis had stored: its AOF copied and loaded by a scratch server."""
    copy = server.directory.parent / "redis-at-crash"
    shutil.copytree(server.directory, copy)
    port = free_port()
    scratch = server.start(port=port, directory=copy)
    try:
        auth = f":{server.password}@" if server.password else ""
        return _stream_ids(f"redis://{auth}127.0.0.1:{port}/0", prefix, line)
    finally:
        scratch.terminate()
        scratch.wait(10)


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        out = {}
        for partition in consumer.partitions_for_topic(topic) or ():
            offset = consumer.committed(TopicPartition(topic, partition))
            if offset is not None:
                out[partition] = offset
        return out
    finally:
        consumer.close(autocommit=False)


def _camera_thread(kafka: KafkaSettings, topic: str, frames, fps: float, camera: str = "cam-a",
                   line: str = "line-a", **sink_options):
    sent = []
    sink = BufferedFrameSink(KafkaRecordSink(kafka), topic, **sink_options).start()
    producer = CameraProducer(lambda: ListReader(frames), sink, camera_id=camera,
                              product_line=line, fps_limit=fps, on_frame=sent.append)
    thread = threading.Thread(target=producer.run, args=(threading.Event(),))
    thread.start()
    return thread, sink, sent


def _wait(condition, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def test_redis_outage_pauses_commits_nothing_unstored_and_resumes(wiring, own_redis,
                                                                   start_worker):
    w = dataclasses.replace(wiring, redis_url=own_redis.url)
    running = start_worker(w.worker_settings("w-redis", retry_backoff_max_s=0.5))
    frames = frame_sequence(60, IMAGE_SIZE, defect_every=0, seed=21)
    thread, sink, sent = _camera_thread(w.kafka(), w.frames_topic, frames, fps=12)

    def stored() -> list[str]:
        return _stream_ids(own_redis.url, w.prefix, "line-a")

    assert _wait(lambda: len(stored()) >= 12, 60), "the worker stores results before the fault"
    own_redis.kill()
    down_at = time.monotonic()
    committed_while_down, paused_seen = [], False
    while time.monotonic() - down_at < 5.0:
        committed_while_down.append(sum(_committed(w.bootstrap, w.group,
                                                   w.frames_topic).values()))
        paused_seen |= _metric(running, "linewatch_worker_paused") == 1
        time.sleep(0.25)
    at_crash = _stored_at_crash(own_redis, w.prefix, "line-a")
    assert running.thread.is_alive() and running.worker.fatal_error is None, "still running"
    own_redis.start()
    thread.join(30)
    assert sink.close(drain_timeout_s=20) == 0 and sink.dropped == 0
    assert _wait(lambda: len(stored()) >= len(sent), 90)
    ids = stored()
    print(f"\n[redis outage 5.0s] frames produced {len(sent)}, results stored {len(ids)} "
          f"(stored at the crash {len(at_crash)}, most committed while down "
          f"{max(committed_while_down)}, paused while down: {paused_seen}, "
          f"replays overwritten {_metric(running, 'linewatch_worker_replayed_total'):g})")
    assert ids == [f.frame_id for f in sent], "every frame once, in order: 0 lost, 0 duplicated"
    # commits nothing it has not stored: one camera = one partition, so a committed offset
    # N means frames 0..N-1, which must all have been in Redis when it went down
    assert max(committed_while_down) <= len(at_crash)
    assert at_crash == ids[: len(at_crash)]
    assert paused_seen, "consumption paused while Redis was down"
    assert _metric(running, "linewatch_worker_redis_up") == 1
    assert running.thread.is_alive(), "the worker never exited"
    client = redis.Redis.from_url(own_redis.url)
    keys = [k.decode() for k in client.scan_iter("*", count=1000)]
    assert keys and all(k.startswith(w.prefix + ":") for k in keys), \
        "results and heatmaps only under the configured key prefix"


def test_broker_restart_producer_buffers_and_worker_rejoins(redis_url, model_store,
                                                            start_worker):
    tag = uuid.uuid4().hex[:10]
    frames_topic, dlq_topic = f"frames-{tag}", f"dlq-{tag}"
    stack = LocalStack(redis_url=redis_url, topics={frames_topic: 4, dlq_topic: 1})
    stack.start_broker()
    try:
        w = Wiring(stack.bootstrap, redis_url, frames_topic, dlq_topic, f"group-{tag}",
                   f"lwtest-{tag}", model_store)
        running = start_worker(w.worker_settings("w-broker"))
        assert _wait(lambda: bool(running.worker._source.assignment()), 30)
        camera_kafka = KafkaSettings(bootstrap_servers=stack.bootstrap,
                                     frames_topic=frames_topic, enable_idempotence=True,
                                     request_timeout_ms=3000)
        # warm-up frame from another camera: the worker has joined and loaded its model
        warm, warm_sink, _ = _camera_thread(camera_kafka, frames_topic,
                                            frame_sequence(1, IMAGE_SIZE, seed=1), fps=10,
                                            camera="cam-warm")
        warm.join(30)
        warm_sink.close(drain_timeout_s=20)
        assert _wait(lambda: _stream_ids(redis_url, w.prefix, "line-a", "cam-warm"), 60)
        frames = frame_sequence(100, IMAGE_SIZE, defect_every=0, seed=33)
        thread, sink, sent = _camera_thread(camera_kafka, frames_topic, frames, fps=8,
                                            send_timeout_s=3.0, backoff_max_s=1.0)

        def stored() -> list[str]:
            return _stream_ids(redis_url, w.prefix, "line-a")

        assert _wait(lambda: len(sent) >= 16 and len(stored()) >= len(sent) - 1, 60), \
            "the worker caught up before the stop"
        caught_up = len(stored())
        stack.stop_broker()  # SIGTERM; tansu may take a few seconds to go
        captured_at_stop = len(sent)
        peak_during = 0
        for _ in range(20):
            time.sleep(0.25)
            peak_during = max(peak_during, sink.buffered)
        captured_during = len(sent) - captured_at_stop
        stack.start_broker()  # tansu starts empty: the stack recreates the topics
        thread.join(60)
        assert sink.close(drain_timeout_s=60) == 0
        assert _wait(lambda: len(stored()) >= len(sent), 120)
        ids = stored()
        print(f"\n[broker restart 5.0s] frames produced {len(sent)}, results stored "
              f"{len(ids)} (caught up at {caught_up}, {captured_at_stop} captured by the time "
              f"the broker "
              f"was down; then captured during the 5 s outage "
              f"{captured_during}, peak buffer {peak_during}, dropped {sink.dropped}, "
              f"producer rebuilt "
              f"{sink._sink.resets}x)")
        assert sink.dropped == 0
        assert peak_during >= 0.8 * captured_during > 0, \
            "frames captured during the outage waited in the producer's buffer"
        assert ids == [f.frame_id for f in sent], "every frame once, in order"
        assert running.thread.is_alive() and running.worker.fatal_error is None
    finally:
        stack.stop_broker()


def _run_cli(module: str, env: dict[str, str], timeout: float = 90
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module], env={**os.environ, **env,
                          "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)


def test_permanent_faults_exit_with_a_clear_message(wiring, tmp_path):
    secret = "correct-horse-" + uuid.uuid4().hex
    protected = OwnRedis(tmp_path / "redis-auth", password=secret)
    protected.directory.mkdir()
    protected.start()
    try:
        wrong_url = f"redis://:wrong-{secret}@127.0.0.1:{protected.port}/0"
        jobs = {
            "redis auth": ("workers.inference", {**wiring.env("w-auth"),
                                                 "LINEWATCH_REDIS__URL": wrong_url}),
            "missing topic (worker)": ("workers.inference", {
                **wiring.env("w-topic"), "LINEWATCH_KAFKA__FRAMES_TOPIC": "no-such-topic"}),
            "missing topic (producer)": ("workers.producer", {
                "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": wiring.bootstrap,
                "LINEWATCH_KAFKA__FRAMES_TOPIC": "no-such-topic",
                "LINEWATCH_CAMERA_ID": "cam-a", "LINEWATCH_PRODUCT_LINE": "line-a",
                "LINEWATCH_SOURCE": str(tmp_path), "LINEWATCH_HTTP__ENABLED": "false"}),
        }
        results: dict[str, subprocess.CompletedProcess[str]] = {}
        threads = [threading.Thread(target=lambda k=k, m=m, e=e: results.__setitem__(
            k, _run_cli(m, e))) for k, (m, e) in jobs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for name, done in results.items():
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            print(f"\n[{name}] exit {done.returncode}: {last}")
        auth = results["redis auth"]
        assert auth.returncode == 1 and "Redis refused our credentials" in auth.stderr
        assert secret not in auth.stderr + auth.stdout, "the password is never printed"
        for name in ("missing topic (worker)", "missing topic (producer)"):
            done = results[name]
            assert done.returncode == 1, done.stderr[-2000:]
            assert "no-such-topic do not exist" in done.stderr
    finally:
        protected.stop()


def _dead_letter_cli(wiring: Wiring, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "workers.dead_letters", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": wiring.bootstrap,
             "LINEWATCH_KAFKA__FRAMES_TOPIC": wiring.frames_topic,
             "LINEWATCH_KAFKA__DEAD_LETTER_TOPIC": wiring.dlq_topic},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dead_letters_list_and_replay_after_the_model_is_added(wiring, start_worker, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(wiring.store / "line-a", store / "line-a")  # line-b has no model yet
    w = dataclasses.replace(wiring, store=store)
    start_worker(w.worker_settings("w-dlq"))
    kafka = w.kafka()
    frames = frame_sequence(4, IMAGE_SIZE, defect_every=0, seed=5)
    for camera, line in (("cam-a", "line-a"), ("cam-b", "line-b")):
        thread, sink, _ = _camera_thread(kafka, w.frames_topic, frames, fps=50,
                                         camera=camera, line=line)
        thread.join(30)
        assert sink.close(drain_timeout_s=20) == 0
    assert _wait(lambda: len(_stream_ids(w.redis_url, w.prefix, "line-a")) == 4, 60)
    listing = ""

    def listed() -> bool:
        nonlocal listing
        listing = _dead_letter_cli(w, "list")
        return "4 dead letter(s)" in listing

    assert _wait(listed, 60, step=1.0), listing
    rows = listing.strip().splitlines()[:-1]
    print("\n" + listing.strip())
    assert all("\tunknown_product_line\t" in r and "camera=cam-b" in r and
               f"{w.frames_topic}/" in r for r in rows)
    shutil.copytree(wiring.store / "line-b", store / "line-b")  # the model arrives
    out = _dead_letter_cli(w, "replay", "--reason", "unknown_product_line")
    assert out.startswith("replayed 4 dead letter(s)")
    assert _wait(lambda: len(_stream_ids(w.redis_url, w.prefix, "line-b", "cam-b")) == 4, 60)
    _dead_letter_cli(w, "replay", "--line", "line-b")  # twice: still one result per frame
    time.sleep(2.0)
    ids = _stream_ids(w.redis_url, w.prefix, "line-b", "cam-b")
    print(f"[dead-letter replay] frames produced 8, results stored "
          f"{len(ids) + 4} after replaying 4 dead letters twice")
    assert len(ids) == 4 and len(set(ids)) == 4
