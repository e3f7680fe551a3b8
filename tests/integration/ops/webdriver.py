"""A minimal W3C WebDriver client over urllib, enough to drive Debian's chromedriver.

Plain HTTP keeps the test free of a browser-automation dependency: the protocol calls
used here (new session, navigate, execute script, find element, element screenshot) are
five JSON requests.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-device-scale-factor=1",
    "--window-size=1280,1000",
]


def browser_missing_reason() -> str | None:
    """Say why the browser tests cannot run here, or ``None`` when they can.

    The tests fail on it, unless ``LINEWATCH_ALLOW_NO_BROWSER=1`` lets them skip (a
    developer machine without Chromium; CI never sets it).
    """
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} missing: apt-get install -y chromium chromium-driver"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebDriver:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._profile = tempfile.mkdtemp(prefix="linewatch-chromium-")
        port = _free_port()
        self._process = subprocess.Popen(
            [str(CHROMEDRIVER), f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._request("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.close()
                    raise
                time.sleep(0.1)
        options = {
            "binary": str(CHROMIUM),
            "args": [*CHROMIUM_ARGS, f"--user-data-dir={self._profile}"],
        }
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        session = self._request("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self._session = f"/session/{session['sessionId']}"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self._base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"webdriver {method} {path}: {error.read()[:500]!r}") from error

    def get(self, url: str) -> None:
        """Navigate to ``url``."""
        self._request("POST", f"{self._session}/url", {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        """Run a synchronous script in the page and return its value."""
        return self._request(
            "POST", f"{self._session}/execute/sync", {"script": script, "args": list(args)}
        )

    def wait_for(self, script: str, timeout_s: float = 20.0) -> Any:
        """Poll ``script`` until it returns a truthy value.

        A script error while polling (the page is between two documents, e.g. right after a
        login redirect) counts as "not yet"; the last one is raised at the deadline.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.execute(script)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {script}")
            time.sleep(0.2)

    def element_screenshot_png(self, css: str) -> bytes:
        """Screenshot of the first element matching ``css``, as PNG bytes."""
        found = self._request(
            "POST", f"{self._session}/element", {"using": "css selector", "value": css}
        )
        element_id = next(iter(found.values()))
        encoded = self._request("GET", f"{self._session}/element/{element_id}/screenshot")
        return base64.b64decode(encoded)

    def screenshot_png(self) -> bytes:
        """Screenshot of the whole viewport, as PNG bytes."""
        return base64.b64decode(self._request("GET", f"{self._session}/screenshot"))

    def click(self, css: str, attempts: int = 5) -> None:
        """Click the first element matching ``css`` (a real pointer click).

        A page that re-renders on a timer may replace the element between finding and
        clicking it ("stale element reference"): it is then found again.
        """
        for attempt in range(attempts):
            found = self._request(
                "POST", f"{self._session}/element", {"using": "css selector", "value": css}
            )
            element_id = next(iter(found.values()))
            try:
                self._request("POST", f"{self._session}/element/{element_id}/click", {})
                return
            except RuntimeError as error:
                if "stale element" not in str(error) or attempt == attempts - 1:
                    raise

    def delete_cookies(self) -> None:
        """Forget every cookie (a new visitor)."""
        self._request("DELETE", f"{self._session}/cookie")

    def close(self) -> None:
        """End the session and the driver."""
        try:
            if hasattr(self, "_session"):
                self._request("DELETE", self._session)
        finally:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            shutil.rmtree(self._profile, ignore_errors=True)
