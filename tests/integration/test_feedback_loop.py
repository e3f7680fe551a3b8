"""The review feedback loop: alerts marked as false alarms in the console reach the trainer,
and the refit model stops flagging them.

Real Redis, the real console server (login, review POSTs over HTTP), the worker's result
sink, the trainer's command and real SimpleNet fits (tiny settings, as
tests/integration/test_trainer.py). The line's frames change look (a new lighting: warmer,
darker); the current model flags those good frames, operators mark them as false alarms,
the next refit trains on them and the gate scores both models on them.
"""

from __future__ import annotations

import http.cookiejar
import io
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from devtools.synthetic import good_frames
from pipeline.model_store import read_current
from pipeline.redis.results import RedisResultReader, RedisResultSink
from pipeline.runtimes import pytorch
from pipeline.settings import RedisSettings
from pipeline.wire.codec import encode_heatmap_png
from pipeline.wire.layout import RedisKeys, artifact_path, report_path
from pipeline.wire.messages import ResultMessage, StoredResult, Timings
from workers.dashboard.console import Console
from workers.dashboard.server import DashboardServer
from workers.dashboard.settings import AuthSettings, DashboardSettings
from workers.trainer import main as trainer

pytestmark = pytest.mark.integration

LINE = "line-fb"
CAMERA = "cam-fb"
SIZE = 96
PASSWORD = "feedback-password"
MARKED = 16


def _relit(image: np.ndarray) -> np.ndarray:
    """The same product under a new, warmer and darker light."""
    shifted = image.astype(np.float32) * 0.7 + np.array([45.0, 10.0, -25.0], np.float32)
    return np.clip(shifted, 0, 255).astype(np.uint8)


def _write(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        cv2.imwrite(str(folder / f"{index:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[str]:
    prefix = f"lwtest-fb-{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in {
        "LINEWATCH_REDIS__URL": redis_url, "LINEWATCH_REDIS__KEY_PREFIX": prefix,
        "LINEWATCH_MODEL_STORE": str(tmp_path / "store"),
        "LINEWATCH_FIT__IMAGE_SIZE": "64", "LINEWATCH_FIT__EPOCHS": "3",
        "LINEWATCH_FIT__HEADS": "2", "LINEWATCH_FIT__HOLDOUT_FRACTION": "0.25",
        "LINEWATCH_FIT__DEVICE": "cpu",
        # small fast models on few frames: looser bounds than production, same mechanism
        "LINEWATCH_GATE__MAX_FALSE_ALARM_RATE": "0.4",
        "LINEWATCH_GATE__MAX_FALSE_ALARM_INCREASE": "0.2",
    }.items():
        monkeypatch.setenv(name, value)
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _train(good: Path, gate: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = trainer.main(["--line", LINE, "--good", str(good), "--gate-good", str(gate),
                         "--no-progress"], out=out)
    return code, out.getvalue()


def _load(store: Path, version: str):
    return pytorch.loader()(artifact_path(store, LINE, version), "cpu", LINE)


def _store_alerts(settings: RedisSettings, detector, frames: list[np.ndarray]) -> list[str]:
    """What the worker stores for these frames (JPEG frames, heatmaps, results)."""
    prediction = detector.predict(frames)
    items, ids = [], []
    now = time.time()
    for index, frame in enumerate(frames):
        frame_id = f"relit-{index:03d}"
        ids.append(frame_id)
        result = ResultMessage(
            frame_id=frame_id, camera_id=CAMERA, product_line=LINE, capture_ts=now + index,
            image_score=float(prediction.scores[index]),
            normalized_score=float(prediction.normalized_scores[index]),
            label=bool(prediction.labels[index]), model_version=str(detector.metadata.version),
            timings=Timings(1.0, 1.0, 5.0, len(frames)), stored_ts=now + index, worker_id="w-1")
        jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        items.append(StoredResult(result, encode_heatmap_png(prediction.heatmaps[index]), jpeg))
    with RedisResultSink(settings) as sink:
        sink.store(items)
    return ids


def _console_session(url: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login = urllib.request.Request(
        url + "/login", data=json.dumps({"username": "operator", "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json", "Origin": url})
    with opener.open(login, timeout=10) as reply:
        assert reply.status == 200
    return opener


def _mark(opener: urllib.request.OpenerDirector, url: str, frame_id: str, verdict: str) -> dict:
    request = urllib.request.Request(
        f"{url}/api/lines/{LINE}/alerts/{CAMERA}/{frame_id}/review",
        data=json.dumps({"verdict": verdict}).encode(),
        headers={"Content-Type": "application/json", "Origin": url})
    with opener.open(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_marked_false_alarms_train_the_refit_which_stops_flagging_them(
        env: str, tmp_path: Path, redis_url: str) -> None:
    store = tmp_path / "store"
    good = _write(tmp_path / "good", good_frames(48, SIZE, seed=400))
    gate = _write(tmp_path / "gate", good_frames(16, SIZE, seed=401))
    code, summary = _train(good, gate)
    assert code == trainer.EXIT_PROMOTED, summary
    first = read_current(store, LINE)
    assert first is not None
    relit = [_relit(image) for image in good_frames(MARKED + 2, SIZE, seed=402)]
    settings = RedisSettings(url=redis_url, key_prefix=env)
    frame_ids = _store_alerts(settings, _load(store, first), relit)
    client = redis.Redis.from_url(redis_url)
    reader = RedisResultReader(client, RedisKeys(env))
    flagged = [r.frame_id for r in reader.alerts(LINE)]
    assert len(flagged) >= MARKED, f"the current model flags the relit frames: {flagged}"
    console_settings = DashboardSettings(redis=settings, http={"port": 0},
                                         auth=AuthSettings(password=PASSWORD))
    with DashboardServer(console_settings, Console(reader)) as console:
        opener = _console_session(console.url)
        marked = flagged[:MARKED]
        for frame_id in marked:
            assert _mark(opener, console.url, frame_id, "false_alarm")["frame_kept"] is True
        # an operator who changes their mind: that frame is no longer a candidate
        _mark(opener, console.url, marked[-1], "acknowledged")
    code, summary = _train(good, gate)
    print(summary)
    assert code == trainer.EXIT_PROMOTED, summary
    second = read_current(store, LINE)
    report = json.loads(report_path(store, LINE, second).read_text())
    assert report["counts"]["false_alarms"] == MARKED - 1
    assert f"{MARKED - 1} marked in the console" in summary
    assert report["candidate_figures"]["reviewed_frames"] == MARKED - 1
    assert report["current_figures"]["reviewed_flagged_rate"] == 1.0
    assert report["candidate_figures"]["reviewed_flagged_rate"] == 0.0
    # the refit model scores what the worker would read (the stored JPEGs) below threshold
    jpegs = [reader.frame(CAMERA, frame_id) for frame_id in marked[:-1]]
    images = [cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB) for j in jpegs]
    before = _load(store, first).predict(images).normalized_scores
    prediction = _load(store, second).predict(images)
    after = prediction.normalized_scores
    print(f"marked false alarms ({len(images)}), normalised score (0.5 = threshold): "
          f"model {first}: {before.min():.3f}-{before.max():.3f}, "
          f"refit {second}: {after.min():.3f}-{after.max():.3f}")
    assert float(before.min()) >= 0.5, "the first model flagged every marked frame"
    assert float(after.max()) < 0.5, after
    client.close()
    assert frame_ids  # every relit frame was stored
