"""Trainer job against real tansu + Redis with real SimpleNet fits and real workers.

A promotion happens mid-stream: every frame gets exactly one result, each worker switches
from the old to the new version once and never back; a candidate fitted on another
product's frames is refused by the gate; a rollback makes the workers serve the previous
version again.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from devtools.local_stack import create_topics
from devtools.synthetic import good_frames
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.model_store import list_versions, read_current
from pipeline.redis.results import RedisResultReader
from pipeline.wire.codec import encode_image
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import Encoding, FrameMessage
from workers.trainer import main as trainer

from .conftest import IMAGE_SIZE

pytestmark = pytest.mark.integration

LINE = "line-a"
CAMERAS = ("cam-1", "cam-2", "cam-3", "cam-4")


def _write_folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        cv2.imwrite(str(folder / f"{index:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def line_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("line-data")
    _write_folder(root / "good", good_frames(60, IMAGE_SIZE, seed=100))
    _write_folder(root / "gate", good_frames(30, IMAGE_SIZE, seed=101))
    # another product (inverted tones): what a wrong data folder for the line looks like
    _write_folder(root / "other-product", [255 - image for image in
                                           good_frames(40, IMAGE_SIZE, seed=102)])
    return root


def _trainer_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str, bootstrap: str,
                 store: Path, cwd: Path) -> None:
    monkeypatch.chdir(cwd)  # no stray .env
    for name, value in {
        "LINEWATCH_REDIS__URL": redis_url,
        "LINEWATCH_REDIS__KEY_PREFIX": prefix,
        "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LINEWATCH_KAFKA__ENABLE_IDEMPOTENCE": "false",
        "LINEWATCH_MODEL_STORE": str(store),
        "LINEWATCH_FIT__IMAGE_SIZE": "64",
        "LINEWATCH_FIT__EPOCHS": "3",
        "LINEWATCH_FIT__HOLDOUT_FRACTION": "0.25",
        "LINEWATCH_FIT__DEVICE": "cpu",
        "LINEWATCH_CAPTURE_TIMEOUT_S": "20",
        # small fast models on few frames: looser bounds than production, same mechanism
        "LINEWATCH_GATE__MAX_FALSE_ALARM_RATE": "0.4",
        "LINEWATCH_GATE__MAX_FALSE_ALARM_INCREASE": "0.2",
    }.items():
        monkeypatch.setenv(name, value)


def _run(args: list[str]) -> tuple[int, str]:
    if args[0] not in ("rollback", "list"):
        args = [*args, "--no-progress"]
    out = io.StringIO()
    code = trainer.main(args, out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, model_store, line_data, broker, redis_url) -> Path:
    """line-a: an older version fitted by the model package, and a current one fitted by the
    trainer (bootstrap: no current model, absolute bounds only)."""
    store = tmp_path_factory.mktemp("trainer-store")
    older = next((model_store / LINE / "versions").glob("*.safetensors"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        _trainer_env(monkeypatch, redis_url, "lwtest-trainer-base", broker, store,
                     tmp_path_factory.mktemp("cwd"))
        code, summary = _run(["--line", LINE, "--good", str(line_data / "good"),
                              "--gate-good", str(line_data / "gate")])
    print(summary)
    assert code == trainer.EXIT_PROMOTED, summary
    shutil.copy2(older, store / LINE / "versions" / older.name)
    return store


def _copy_store(base: Path, target: Path) -> Path:
    shutil.copytree(base, target)
    return target


class StreamingCameras:
    """Sends line-a frames round-robin over four cameras at a fixed rate until stopped."""

    def __init__(self, wiring, fps: float = 12.0) -> None:
        self._wiring = wiring
        self._period = 1.0 / fps
        self._stop = threading.Event()
        self.sent: list[FrameMessage] = []
        self.error: BaseException | None = None
        self._images = good_frames(24, IMAGE_SIZE, seed=200)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._send_until_stopped()
        except BaseException as error:  # reported by stop()
            self.error = error

    def _send_until_stopped(self) -> None:
        with KafkaRecordSink(self._wiring.kafka()) as sink:
            index = 0
            while not self._stop.is_set():
                camera = CAMERAS[index % len(CAMERAS)]
                image = self._images[index % len(self._images)]
                frame = FrameMessage(camera, LINE, f"f{index:06d}", time.time(), Encoding.JPEG,
                                     IMAGE_SIZE, IMAGE_SIZE, encode_image(image))
                sink.send_all(self._wiring.frames_topic, [(frame.key, frame.payload,
                                                           frame.headers())], timeout_s=10)
                self.sent.append(frame)
                index += 1
                time.sleep(self._period)

    def start(self) -> StreamingCameras:
        self._thread.start()
        return self

    def stop(self) -> list[FrameMessage]:
        self._stop.set()
        self._thread.join(20)
        assert self.error is None, f"camera thread failed: {self.error!r}"
        return self.sent


def _reader(wiring) -> RedisResultReader:
    return RedisResultReader(redis.Redis.from_url(wiring.redis_url), RedisKeys(wiring.prefix))


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_ready(workers, partitions: int = 4) -> None:
    _wait_until(lambda: all(w.worker.ready for w in workers) and sum(
        len(w.worker._source.assignment()) for w in workers) == partitions, 30,
        "workers to join the group")


def _send_known_good(wiring, topic: str) -> None:
    """The line's known-good frames on a capture topic, plus another line's frames."""
    create_topics(wiring.bootstrap, {topic: 2})
    records = []
    for line, seed in ((LINE, 300), ("line-b", 301)):
        for index, image in enumerate(good_frames(60 if line == LINE else 10, IMAGE_SIZE,
                                                  seed=seed)):
            frame = FrameMessage(f"good-{line}", line, f"g{index:05d}", time.time(),
                                 Encoding.JPEG, IMAGE_SIZE, IMAGE_SIZE, encode_image(image))
            records.append((frame.key, frame.payload, frame.headers()))
    with KafkaRecordSink(wiring.kafka()) as sink:
        sink.send_all(topic, records, timeout_s=20)


def test_promotion_mid_stream_switches_each_worker_once_and_bad_candidate_is_refused(
        wiring, start_worker, base_store, line_data, tmp_path, monkeypatch):
    started = time.monotonic()
    store = _copy_store(base_store, tmp_path / "store")
    wiring = replace(wiring, store=store)
    old_version = read_current(store, LINE)
    _trainer_env(monkeypatch, wiring.redis_url, wiring.prefix, wiring.bootstrap, store, tmp_path)
    capture_topic = f"good-{wiring.group}"
    _send_known_good(wiring, capture_topic)
    # model_refresh_s=60 (fixture): only the promotion event can switch within the test
    workers = [start_worker(wiring.worker_settings(f"w-{i}")) for i in (1, 2)]
    _wait_ready(workers)
    cameras = StreamingCameras(wiring).start()
    reader = _reader(wiring)
    try:
        _wait_until(lambda: reader.stream_length(LINE) >= 12, 60, "results of the old model")
        code, summary = _run(["--line", LINE, "--from-topic", capture_topic,
                              "--gate-good", str(line_data / "gate")])
        print(summary)
        promoted_at = time.time()
        assert code == trainer.EXIT_PROMOTED, summary
        new_version = read_current(store, LINE)
        assert new_version != old_version
        assert f"kafka:{capture_topic}" in summary
        _wait_until(lambda: any(r.model_version == new_version
                                for r in reader.results(LINE)[-8:]), 30, "the new version")
        # a candidate fitted on another product's frames: refused, the new version stays
        code, summary = _run(["--line", LINE, "--good", str(line_data / "other-product"),
                              "--gate-good", str(line_data / "gate")])
        print(summary)
        assert code == trainer.EXIT_REFUSED, summary
        assert "REFUSED" in summary and "false alarm rate" in summary
        assert read_current(store, LINE) == new_version
        _wait_until(lambda: reader.results(LINE)[-1].stored_ts > promoted_at + 6.0, 30,
                    "results well after the promotion")
    finally:
        sent = cameras.stop()
    _wait_until(lambda: reader.stream_length(LINE) >= len(sent), 60, "every result")
    results = reader.results(LINE)

    # exactly one result per frame
    assert len(results) == len(sent)
    assert sorted((r.camera_id, r.frame_id) for r in results) == sorted(
        (f.camera_id, f.frame_id) for f in sent)
    # per worker (stream order = store order): old ... old new ... new, never back
    versions_seen = set()
    for worker_id in {r.worker_id for r in results}:
        sequence = [r.model_version for r in results if r.worker_id == worker_id]
        versions_seen |= set(sequence)
        switches = sum(a != b for a, b in itertools.pairwise(sequence))
        assert switches <= 1, f"{worker_id} switched {switches} times"
        assert set(sequence) <= {old_version, new_version}
        assert sequence[-1] == new_version, worker_id
    assert versions_seen == {old_version, new_version}, "the switch happened mid-stream"
    # results stored well after the promotion all come from the new version
    late = [r for r in results if r.stored_ts > promoted_at + 5.0]
    assert late and all(r.model_version == new_version for r in late)
    # the refused candidate left no artifact; the good one left its report
    stored = [info.version for info in list_versions(store, LINE)]
    assert stored[-2:] == [old_version, new_version] and len(stored) == 3
    report = json.loads((store / LINE / "versions" / f"{new_version}.json").read_text())
    assert report["counts"]["captured"] == 60, "only line-a frames of the capture topic"
    assert report["previous"] == old_version and len(report["train_digests"]) > 0
    print(f"frames {len(sent)}, results {len(results)}, workers "
          f"{sorted({r.worker_id for r in results})}, {time.monotonic() - started:.1f}s")


def test_rollback_makes_the_workers_serve_the_previous_version(
        wiring, start_worker, base_store, tmp_path, monkeypatch):
    store = _copy_store(base_store, tmp_path / "store")
    wiring = replace(wiring, store=store)
    _trainer_env(monkeypatch, wiring.redis_url, wiring.prefix, wiring.bootstrap, store, tmp_path)
    older, current = [info.version for info in list_versions(store, LINE)]
    assert read_current(store, LINE) == current
    workers = [start_worker(wiring.worker_settings("w-1"))]
    _wait_ready(workers)
    reader = _reader(wiring)
    cameras = StreamingCameras(wiring, fps=8).start()

    def stored_after(moment: float) -> bool:
        return any(r.stored_ts > moment for r in reader.results(LINE))

    try:
        _wait_until(lambda: reader.stream_length(LINE) >= 4, 60, "results")
        code, output = _run(["rollback", "--line", LINE])
        assert code == 0, output
        assert f"{current} -> {older}" in output
        assert read_current(store, LINE) == older
        rolled_back_at = time.time()
        _wait_until(lambda: stored_after(rolled_back_at + 3.0), 30, "results after rollback")
        # a version that does not exist: refused, pointer unchanged
        code, _ = _run(["rollback", "--line", LINE, "--to", "no-such-version"])
        assert code == trainer.EXIT_FAILED and read_current(store, LINE) == older
        code, output = _run(["rollback", "--line", LINE, "--to", current])
        assert code == 0 and read_current(store, LINE) == current
        restored_at = time.time()
        _wait_until(lambda: stored_after(restored_at + 3.0), 30, "results after restore")
    finally:
        sent = cameras.stop()
    _wait_until(lambda: reader.stream_length(LINE) >= len(sent), 60, "every result")
    results = reader.results(LINE)
    assert len(results) == len(sent)
    runs = [v for i, v in enumerate(r.model_version for r in results)
            if i == 0 or results[i - 1].model_version != v]
    assert runs == [current, older, current], "served current, then the previous, then back"
    before = {r.model_version for r in results if r.stored_ts < rolled_back_at}
    between = {r.model_version for r in results
               if rolled_back_at + 3.0 < r.stored_ts < restored_at}
    after = {r.model_version for r in results if r.stored_ts > restored_at + 3.0}
    assert (before, between, after) == ({current}, {older}, {current})
    code, listing = _run(["list", "--line", LINE])
    assert code == 0
    assert [line.split()[1] for line in listing.splitlines()[1:] if line.startswith("*")] == [
        current]
