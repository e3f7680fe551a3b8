"""Seed Redis with what workers would have written, for the console's tests and bench.

Writes go through the real adapters: results through
:class:`pipeline.redis.results.RedisResultSink` (the worker's idempotent Lua write, so the
per-minute counters are real), worker health through
:class:`workers.inference.health.HealthPublisher`. Only the clock is chosen: each result
carries the capture time it is given.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import redis

from pipeline.redis.results import RedisResultSink
from pipeline.settings import RedisSettings
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ResultMessage, StoredResult, Timings
from workers.inference.health import HealthPublisher, HealthState


@dataclass(frozen=True)
class SeedFrame:
    """One result to write.

    Attributes:
        line: Product line.
        camera: Camera.
        frame_id: Frame id.
        capture_ts: Capture time (Unix seconds).
        score: Normalised score (0.5 = threshold).
        with_images: Also store a frame JPEG and a heatmap PNG.
    """

    line: str
    camera: str
    frame_id: str
    capture_ts: float
    score: float
    with_images: bool = False


def frame_jpeg(width: int = 320, height: int = 240, grey: int = 128) -> bytes:
    """A plain grey JPEG frame."""
    frame = np.full((height, width, 3), grey, np.uint8)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def heatmap_png(size: int = 64) -> bytes:
    """A heatmap whose top-left quadrant is hot (normalised 1.0), the rest cold."""
    heatmap = np.zeros((size, size), np.uint8)
    heatmap[: size // 2, : size // 2] = 255
    return cv2.imencode(".png", heatmap)[1].tobytes()


def store_frames(settings: RedisSettings, frames: Iterable[SeedFrame], version: str = "v1",
                 worker: str = "worker-0", jpeg: bytes | None = None,
                 png: bytes | None = None, batch: int = 500) -> int:
    """Write results as a worker would; returns how many were new."""
    jpeg = jpeg if jpeg is not None else frame_jpeg()
    png = png if png is not None else heatmap_png()
    fresh = 0
    with RedisResultSink(settings) as sink:
        items: list[StoredResult] = []
        for f in frames:
            result = ResultMessage(
                frame_id=f.frame_id, camera_id=f.camera, product_line=f.line,
                capture_ts=f.capture_ts, image_score=f.score * 2.0, normalized_score=f.score,
                label=f.score >= 0.5, model_version=f"{f.line}-{version}",
                timings=Timings(queue_ms=3.0, decode_ms=1.0, infer_ms=9.0, batch_size=8),
                stored_ts=f.capture_ts + 0.05, worker_id=worker)
            items.append(StoredResult(result, png if f.with_images else b"",
                                      jpeg if f.with_images else b""))
            if len(items) >= batch:
                fresh += sum(sink.store(items))
                items = []
        if items:
            fresh += sum(sink.store(items))
    return fresh


def publish_health(client: redis.Redis, prefix: str, worker: str, *,
                   lines: Sequence[str] = (), version: str = "v1", lag: int = 0,
                   dead_letters: dict[str, int] | None = None,
                   no_model: dict[str, Sequence[str]] | None = None,
                   paused: bool = False, interval_s: float = 600.0) -> None:
    """Publish one health record for ``worker`` (as its publisher thread would)."""
    state = HealthState()
    state.set_lag({("linewatch.frames", 0): lag})
    for line in lines:
        state.served(line, f"{line}-{version}")
    for line, cameras in (no_model or {}).items():
        for camera in cameras:
            state.missing_model(line, camera)
    for reason, count in (dead_letters or {}).items():
        for _ in range(count):
            state.dead_letter(reason)
    state.set_paused(paused)
    HealthPublisher(client, RedisKeys(prefix), worker, state, interval_s).publish()


def floor_scene(now: float | None = None, lines: int = 20, cameras: int = 10,
                per_camera: int = 60, spacing_s: float = 10.0) -> list[SeedFrame]:
    """A shop floor: ``lines`` x ``cameras`` cameras, ``per_camera`` results each.

    Scores are low with an anomaly every 25th frame; every camera's latest frame keeps its
    images. Camera 0 of every 7th line went silent 31 minutes ago (offline).
    """
    now = time.time() if now is None else now
    rng = np.random.default_rng(0)
    out = []
    for li in range(lines):
        for ci in range(cameras):
            silent = li % 7 == 0 and ci == 0
            end = now - (31 * 60 if silent else 1.0)
            for k in range(per_camera):
                score = 0.62 if k % 25 == 24 else float(rng.uniform(0.1, 0.4))
                out.append(SeedFrame(f"line-{li:02d}", f"l{li:02d}-cam-{ci}", f"f{k:05d}",
                                     end - (per_camera - 1 - k) * spacing_s, score,
                                     with_images=k == per_camera - 1))
    return out
