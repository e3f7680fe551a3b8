"""Real tansu broker (once per session) + real Redis; per-test topics, group, prefix."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from devtools.local_stack import (
    create_topics,
    free_port,
    redis_answers,
    start_redis,
    start_tansu,
)
from devtools.synthetic import good_frames
from pipeline.model_store import publish_model
from pipeline.settings import HttpSettings, KafkaSettings, RedisSettings
from workers.inference.main import build_worker
from workers.inference.settings import BatchingSettings, WorkerSettings
from workers.inference.worker import InferenceWorker

IMAGE_SIZE = 128
LINES = ("line-a", "line-b")


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    port = free_port()
    process = start_tansu(port)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    url = "redis://127.0.0.1:6379/0"
    if redis_answers(url):
        yield url
        return
    port = free_port()
    process = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A store with a real SimpleNet model per line, fitted on synthetic good frames."""
    from model.trainer import FitConfig, fit_detector

    root = tmp_path_factory.mktemp("models")
    for seed, line in enumerate(LINES):
        detector = fit_detector(good_frames(30, IMAGE_SIZE, seed=seed),
                                config=FitConfig(image_size=IMAGE_SIZE, epochs=6, batch_size=8),
                                product_line=line)
        publish_model(root, detector)
    return root


@dataclass
class Wiring:
    """One test's private topics, group and key prefix."""

    bootstrap: str
    redis_url: str
    frames_topic: str
    dlq_topic: str
    group: str
    prefix: str
    store: Path

    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap, frames_topic=self.frames_topic,
                             dead_letter_topic=self.dlq_topic, enable_idempotence=False)

    def worker_settings(self, worker_id: str, **overrides) -> WorkerSettings:
        values = dict(
            kafka=self.kafka(), redis=RedisSettings(url=self.redis_url, key_prefix=self.prefix),
            http=HttpSettings(enabled=False), model_store=self.store, group_id=self.group,
            worker_id=worker_id, batching=BatchingSettings(max_batch_size=8, max_wait_ms=20),
            max_poll_interval_ms=3000, session_timeout_ms=6000, heartbeat_interval_ms=500,
            fetch_max_wait_ms=20, model_refresh_s=60,
        )
        values.update(overrides)
        return WorkerSettings(**values)

    def env(self, worker_id: str) -> dict[str, str]:
        return {
            "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "LINEWATCH_KAFKA__FRAMES_TOPIC": self.frames_topic,
            "LINEWATCH_KAFKA__DEAD_LETTER_TOPIC": self.dlq_topic,
            "LINEWATCH_KAFKA__ENABLE_IDEMPOTENCE": "false",
            "LINEWATCH_REDIS__URL": self.redis_url,
            "LINEWATCH_REDIS__KEY_PREFIX": self.prefix,
            "LINEWATCH_HTTP__ENABLED": "false",
            "LINEWATCH_MODEL_STORE": str(self.store),
            "LINEWATCH_GROUP_ID": self.group,
            "LINEWATCH_WORKER_ID": worker_id,
            "LINEWATCH_MAX_POLL_INTERVAL_MS": "3000",
            "LINEWATCH_SESSION_TIMEOUT_MS": "6000",
            "LINEWATCH_HEARTBEAT_INTERVAL_MS": "500",
            "LINEWATCH_FETCH_MAX_WAIT_MS": "20",
        }


@pytest.fixture
def wiring(broker, redis_url, model_store) -> Iterator[Wiring]:
    tag = uuid.uuid4().hex[:10]
    w = Wiring(broker, redis_url, f"frames-{tag}", f"dlq-{tag}", f"group-{tag}",
               f"lwtest-{tag}", model_store)
    create_topics(broker, {w.frames_topic: 4, w.dlq_topic: 1})
    yield w
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{w.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


class RunningWorker:
    """A worker in a thread of the test process, with real adapters."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._stack = ExitStack()
        self.worker: InferenceWorker = build_worker(settings, self._stack)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop_event,))

    def start(self) -> RunningWorker:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        self._stack.close()


@pytest.fixture
def start_worker() -> Iterator:
    running: list[RunningWorker] = []

    def start(settings: WorkerSettings) -> RunningWorker:
        worker = RunningWorker(settings).start()
        running.append(worker)
        return worker

    yield start
    for worker in running:
        worker.stop()
