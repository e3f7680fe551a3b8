"""The operator console end to end: real Redis -> console server -> headless Chromium.

One console and one Chromium session serve every test of the module. What the workers
would have written goes through the real result sink and health publisher
(devtools/console_seed.py). Screenshots land in ``$LINEWATCH_TEST_OUTPUT/console`` (default
``tests/output/console``). Without Chromium the tests fail, unless
``LINEWATCH_ALLOW_NO_BROWSER=1`` (never set in CI) lets them skip.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from devtools.console_seed import SeedFrame, frame_jpeg, publish_health, store_frames
from pipeline.redis.results import RedisResultReader
from pipeline.settings import RedisSettings
from pipeline.wire.layout import RedisKeys
from pipeline.wire.operations import Review
from tests.integration.ops.conftest import REDIS_URL
from tests.integration.ops.webdriver import WebDriver, browser_missing_reason
from workers.dashboard.console import Console
from workers.dashboard.server import DashboardServer
from workers.dashboard.settings import AuthSettings, DashboardSettings

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
GREY = 128
ROOT = Path(__file__).resolve().parents[3]
OUTPUT = Path(os.environ.get("LINEWATCH_TEST_OUTPUT", ROOT / "tests" / "output")) / "console"


def _scene(now: float) -> list[SeedFrame]:
    frames = []
    # tiles/cam-1: 40 results over the last 80 s, rising into alerts, one outlier of 8.1
    for i in range(40):
        score = 8.1 if i == 20 else (0.2 + 0.005 * i if i < 36 else 0.7 + 0.05 * (i - 36))
        frames.append(SeedFrame("tiles", "cam-1", f"f{i:04d}", now - 80 + 2 * i, score,
                                with_images=i == 39))
    # tiles/cam-2: silent for 31 minutes
    frames += [SeedFrame("tiles", "cam-2", f"g{i:04d}", now - 31 * 60 - 10 * i, 0.2)
               for i in range(5)]
    # boards/cam-3: fine
    frames += [SeedFrame("boards", "cam-3", f"h{i:04d}", now - 20 + i, 0.1) for i in range(10)]
    return frames


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    value = f"lwtest-{uuid.uuid4().hex[:12]}"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{value}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def console(prefix: str) -> Iterator[DashboardServer]:
    client = redis.Redis.from_url(REDIS_URL)
    redis_settings = RedisSettings(url=REDIS_URL, key_prefix=prefix)
    store_frames(redis_settings, _scene(time.time()), worker="worker-0")
    publish_health(client, prefix, "worker-0", lines=["tiles", "boards"], lag=17,
                   dead_letters={"undecodable": 2}, no_model={"caps": ["cam-9"]})
    settings = DashboardSettings(redis=redis_settings, http={"port": 0},
                                 auth=AuthSettings(password=PASSWORD), refresh_ms=1000,
                                 offline_after_s=600)
    queries = Console(RedisResultReader(client, RedisKeys(prefix)),
                      offline_after_s=settings.offline_after_s)
    with DashboardServer(settings, queries) as server:
        yield server
    client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    reason = browser_missing_reason()
    if reason is not None:
        if os.environ.get("LINEWATCH_ALLOW_NO_BROWSER") == "1":
            pytest.skip(reason)
        pytest.fail(reason)
    driver = WebDriver()
    yield driver
    driver.close()


def _shot(browser: WebDriver, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.png").write_bytes(browser.screenshot_png())


def _login(browser: WebDriver, url: str, password: str) -> None:
    browser.wait_for("return document.querySelector('form#login') !== null;")
    browser.execute("const f = document.querySelector('form#login');"
                    " f.password.value = arguments[0]; f.token.value = '';", password)
    browser.click("form#login button[type=submit]")


@pytest.fixture(scope="module")
def page(console: DashboardServer, browser: WebDriver) -> WebDriver:
    browser.delete_cookies()
    browser.get(console.url + "/")
    _login(browser, console.url, PASSWORD)
    browser.wait_for("return document.querySelector('table.overview tbody tr') !== null;")
    return browser


def _status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_login_required(console: DashboardServer, browser: WebDriver) -> None:
    url = console.url
    assert _status(url + "/api/overview") == 401
    assert _status(url + "/healthz") == 200
    # DNS rebinding: a foreign Host header is refused, probes still answer
    assert _status(url + "/login", {"Host": "attacker.example"}) == 400
    assert _status(url + "/healthz", {"Host": "10.1.2.3:8080"}) == 200
    # a cross-site login post is refused before the password is looked at
    body = json.dumps({"username": "operator", "password": PASSWORD}).encode()
    assert _status(url + "/login", {"Origin": "http://evil.example",
                                    "Content-Type": "application/json"}, body) == 403
    # with a valid session cookie, a review posted from another origin is refused
    jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    login = urllib.request.Request(url + "/login", data=body, headers={
        "Origin": url, "Content-Type": "application/json"})
    assert jar.open(login, timeout=5).status == 200
    forged = urllib.request.Request(
        url + "/api/lines/tiles/alerts/cam-1/f0039/review", data=b'{"verdict":"false_alarm"}',
        headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        jar.open(forged, timeout=5)
    assert refused.value.code == 403
    browser.delete_cookies()
    browser.get(url + "/")
    assert browser.wait_for("return location.pathname === '/login' && location.pathname;")
    _login(browser, url, "wrong password!")
    message = browser.wait_for("return document.getElementById('error')?.textContent;")
    assert "Wrong" in message
    _shot(browser, "login-refused")
    _login(browser, url, PASSWORD)
    assert browser.wait_for("return document.getElementById('user')?.textContent;") == "operator"
    cookie = browser.execute("return document.cookie;")
    assert "linewatch_session" not in cookie, "the session cookie must be HttpOnly"


def test_overview_shows_offline_camera_no_model_and_worker_health(page: WebDriver) -> None:
    rows = page.wait_for(
        "const rows = [...document.querySelectorAll('table.overview tbody tr')];"
        " return rows.length >= 4 ? rows.map(r => [r.dataset.line, r.dataset.camera,"
        " r.dataset.state, r.cells[6].textContent]) : null;")
    states = {(line, camera): (state, seen) for line, camera, state, seen in rows}
    assert states[("tiles", "cam-2")][0] == "offline"
    assert "min ago" in states[("tiles", "cam-2")][1]
    assert states[("caps", "cam-9")][0] == "no model"
    assert states[("tiles", "cam-1")][0] == "anomalies"
    assert states[("boards", "cam-3")][0] == "ok"
    # most severe first
    assert [r[2] for r in rows] == ["no model", "offline", "anomalies", "ok"]
    worker = page.execute(
        "const r = document.querySelector('tr[data-worker=\"worker-0\"]');"
        " return r && [...r.cells].map(c => c.textContent);")
    assert worker[3].startswith("17 ") and "undecodable 2" in worker[5]
    chip = page.execute("return document.querySelector('.chip[data-state=\"offline\"]')"
                        ".textContent;")
    assert chip.endswith("1")
    _shot(page, "overview")


def test_drill_down_to_the_heatmap(page: WebDriver, console: DashboardServer) -> None:
    page.get(console.url + "/#/")
    page.wait_for("return document.querySelector('tr[data-camera=\"cam-1\"]') !== null;")
    page.click('tr[data-camera="cam-1"]')
    chart = page.wait_for(
        "const s = document.querySelector('section.line svg.chart');"
        " return s && [s.dataset.points, s.dataset.clipped, s.dataset.ymax];")
    points, clipped, ymax = int(chart[0]), int(chart[1]), float(chart[2])
    assert points == 45 and clipped == 1 and 0.75 <= ymax < 2.0, chart
    overlaps = page.execute(
        "const boxes = cls => [...document.querySelectorAll('svg.chart text.' + cls)]"
        "  .map(t => t.getBoundingClientRect());"
        " const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom"
        "  && b.top < a.bottom;"
        " const out = [];"
        " for (const cls of ['xtick', 'ytick']) { const b = boxes(cls);"
        "  for (let i = 1; i < b.length; i++) if (hit(b[i - 1], b[i])) out.push(cls + i);"
        "  out.push(cls + ':' + b.length); }"
        " return out;")
    assert [o for o in overlaps if ":" not in o] == [], overlaps
    assert all(int(o.split(":")[1]) >= 2 for o in overlaps if ":" in o), overlaps
    legend = page.execute("return document.querySelector('.legend').textContent;")
    assert "threshold" in legend and "clipped" in legend
    _shot(page, "line-view")
    alerts = page.execute("return [...document.querySelectorAll('table.alerts tbody tr')]"
                          ".map(r => r.dataset.frameId);")
    assert alerts[0] == "f0039" and "f0020" in alerts
    page.click('table.alerts tr[data-frame-id="f0039"]')
    size = page.wait_for(
        "const c = document.querySelector('canvas.frame-view');"
        " return c && c.dataset.overlay === 'drawn' ? [c.width, c.height] : null;")
    assert size == [320, 240], "full size: one frame pixel per canvas pixel"
    shot = cv2.imdecode(np.frombuffer(page.element_screenshot_png("canvas.frame-view"),
                                      np.uint8), cv2.IMREAD_COLOR)
    b, g, r = (shot[..., c].astype(int) for c in range(3))
    hot = np.s_[20:100, 20:140]  # the heatmap's hot quadrant: jet red over grey
    assert np.median(r[hot]) > 190 and np.median(r[hot] - b[hot]) > 120
    cold = np.s_[140:230, 180:310]
    assert abs(np.median(r[cold]) - GREY) < 12 and np.max(np.abs(r[cold] - g[cold])) < 20
    _shot(page, "frame-heatmap")


def test_mark_a_false_alarm(page: WebDriver, console: DashboardServer, prefix: str) -> None:
    page.get(console.url + "/#/frame/tiles/cam-1/f0039")
    page.wait_for("return document.querySelector('canvas.frame-view[data-overlay=\"drawn\"]');")
    page.click('button[data-verdict="false_alarm"]')
    status = page.wait_for(
        "const s = document.querySelector('.review-status');"
        " return s.dataset.verdict === 'false_alarm' && s.textContent;")
    assert "false alarm by operator" in status and "kept for the next refit" in status
    _shot(page, "false-alarm")
    client = redis.Redis.from_url(REDIS_URL)
    keys = RedisKeys(prefix)
    review = Review.from_json(client.hget(keys.reviews("tiles"), "cam-1/f0039"))
    assert (review.verdict, review.by) == ("false_alarm", "operator")
    assert abs(review.ts - time.time()) < 60
    (_, fields), = client.xrange(keys.false_alarms("tiles"))
    assert fields[b"frame"] == frame_jpeg()
    # the line view lists it as reviewed; the filter finds it
    page.get(console.url + "/#/line/tiles")
    page.wait_for("return document.querySelector('table.alerts') !== null;")
    page.execute("const s = document.querySelector('select[name=review]');"
                 " s.value = 'false_alarm'; s.dispatchEvent(new Event('change'));")
    listed = page.wait_for(
        "const rows = [...document.querySelectorAll('table.alerts tbody tr')];"
        " return rows.length === 1 && rows.map(r => [r.dataset.frameId, r.dataset.review]);")
    assert listed == [["f0039", "false_alarm"]]
    client.close()
