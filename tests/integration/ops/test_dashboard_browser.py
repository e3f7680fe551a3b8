"""End to end: real Redis -> dashboard server -> headless Chromium -> screenshot pixels."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import redis

from pipeline.redis.results import RedisResultReader
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ResultMessage, Timings
from tests.integration.ops.webdriver import WebDriver, browser_missing_reason
from workers.dashboard.server import DashboardServer

pytestmark = pytest.mark.integration

LINE = "tiles"
CAMERA = "cam-1"
GREY = 128


def _result(frame_id: str, score: float, capture_ts: float) -> ResultMessage:
    return ResultMessage(
        frame_id=frame_id,
        camera_id=CAMERA,
        product_line=LINE,
        capture_ts=capture_ts,
        image_score=score * 2.0,
        normalized_score=score,
        label=score >= 0.5,
        model_version="tiles-20260101-abc123",
        timings=Timings(queue_ms=3.0, decode_ms=1.0, infer_ms=9.0, batch_size=4),
        stored_ts=capture_ts + 0.02,
        worker_id="worker-0",
    )


def seed(client: redis.Redis, prefix: str) -> dict[str, object]:
    """Write what a worker would write for 30 frames of one camera; the last is anomalous."""
    now = time.time()
    frame = np.full((240, 320, 3), GREY, dtype=np.uint8)
    heatmap = np.zeros((64, 64), dtype=np.uint8)
    heatmap[:32, :32] = 255  # hot top-left quadrant (normalised score 1.0)
    frame_jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    heatmap_png = cv2.imencode(".png", heatmap)[1].tobytes()
    scores = [0.2 + 0.01 * i for i in range(27)] + [0.7, 0.8, 0.9]
    alerts = []
    for i, score in enumerate(scores):
        result = _result(f"f{i:04d}", score, now - 30 + i)
        payload = result.to_json()
        client.xadd(f"{prefix}:results:{LINE}", {"result": payload})
        if result.label:
            client.xadd(f"{prefix}:alerts:{LINE}", {"result": payload})
            alerts.append(result.frame_id)
    last = _result("f0029", scores[-1], now)
    client.set(f"{prefix}:frame:{CAMERA}:f0029", frame_jpeg, ex=600)
    client.set(f"{prefix}:heatmap:{CAMERA}:f0029", heatmap_png, ex=600)
    client.set(f"{prefix}:latest:{CAMERA}", last.to_json())
    client.sadd(f"{prefix}:lines", LINE)
    client.sadd(f"{prefix}:cameras:{LINE}", CAMERA)
    client.xadd(
        f"{prefix}:drift:{LINE}",
        {"event": "drift_started", "method": "ks", "statistic": "0.41", "line": LINE},
    )
    return {"alerts": alerts, "points": len(scores)}


@pytest.fixture
def dashboard(redis_client: redis.Redis, key_prefix: str) -> Iterator[DashboardServer]:
    server = DashboardServer(
        ("127.0.0.1", 0), RedisResultReader(redis_client, RedisKeys(key_prefix)), refresh_ms=500
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    reason = browser_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    driver = WebDriver()
    yield driver
    driver.close()


def test_page_draws_heatmap_overlay_chart_and_alerts(
    redis_client: redis.Redis, key_prefix: str, dashboard: DashboardServer, browser: WebDriver
) -> None:
    seeded = seed(redis_client, key_prefix)
    browser.get(dashboard.url + "/")
    selector = f'canvas.overlay[data-camera="{CAMERA}"]'
    rendered = browser.wait_for(
        f"const c = document.querySelector('{selector}');"
        " return c && c.dataset.renderedFrame ? [c.dataset.renderedFrame, c.dataset.overlay,"
        " c.width, c.height] : null;"
    )
    assert rendered == ["f0029", "drawn", 320, 240]

    png = browser.element_screenshot_png(selector)
    shot = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[:2] == (240, 320)
    b, g, r = (shot[..., c].astype(int) for c in range(3))
    # The heatmap's hot quadrant maps to the top-left 160x120 of the canvas: jet red over grey.
    hot = np.s_[20:100, 20:140]
    assert np.median(r[hot]) > 190, "overlay must paint the hot region red"
    assert np.median(r[hot] - g[hot]) > 120 and np.median(r[hot] - b[hot]) > 120
    # Cold regions (heatmap 0) stay the plain grey frame.
    for cold in (np.s_[140:230, 180:310], np.s_[140:230, 10:150], np.s_[10:110, 180:310]):
        assert abs(np.median(r[cold]) - GREY) < 12
        assert np.max(np.abs(r[cold] - g[cold])) < 20

    chart_points = browser.wait_for(
        "const c = document.querySelector('canvas.chart[data-line=\"tiles\"]');"
        " return c && c.dataset.points;"
    )
    assert int(chart_points) == seeded["points"]
    chart = cv2.imdecode(
        np.frombuffer(browser.element_screenshot_png('canvas.chart[data-line="tiles"]'), np.uint8),
        cv2.IMREAD_COLOR,
    )
    # The series colour (#1f77b4 -> BGR 180,119,31) is drawn somewhere on the chart.
    series = np.all(np.abs(chart.astype(int) - [180, 119, 31]) < 40, axis=-1)
    assert series.sum() > 50

    rows = browser.wait_for(
        "const t = document.querySelector('table.alerts[data-line=\"tiles\"]');"
        " return t && t.dataset.count ? [...t.tBodies[0].rows].map(r => r.dataset.frameId) : null;"
    )
    assert rows == list(reversed(seeded["alerts"]))
    badge = browser.execute("return document.querySelector('section.line .drift').textContent;")
    assert "ACTIVE" in badge
    caption = browser.execute("return document.querySelector('.camera .caption').textContent;")
    assert "ANOMALY" in caption and "f0029" in caption
