"""The operator's view: a small web page over the results the workers write to Redis.

Served by the standard library's ``ThreadingHTTPServer`` (no web framework: one HTML page,
one script and a handful of read-only JSON/image routes do not need one). The page draws,
per line and camera, the latest frame with its heatmap overlaid on a canvas in the browser,
the score over time, the recent alerts and the drift state.

Routes::

    GET /                                   the page
    GET /static/dashboard.js                its script
    GET /api/overview                       lines, their cameras, latest results, drift state
    GET /api/lines/{line}/results?count=N   recent results, oldest first
    GET /api/lines/{line}/alerts?count=N    recent alerts, newest first
    GET /api/frames/{camera}/{frame_id}.jpg stored JPEG frame
    GET /api/heatmaps/{camera}/{frame_id}.png stored PNG heatmap
    GET /healthz                            process is up
    GET /readyz                             Redis answers

Binds 127.0.0.1 unless told otherwise. Reads go through
:class:`pipeline.redis.results.RedisResultReader` (keys: :mod:`pipeline.wire.layout`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis

from pipeline.errors import SchemaError
from pipeline.redis.results import RedisResultReader
from pipeline.wire.messages import ResultMessage, is_valid_id

logger = logging.getLogger(__name__)

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
MAX_STREAM_COUNT = 2000

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self'; connect-src 'self'"
    ),
}


def _static(name: str) -> bytes:
    return resources.files("workers.dashboard").joinpath("static", name).read_bytes()


def _results(reader: RedisResultReader, stream_key: str, count: int,
             oldest_first: bool) -> list[dict[str, Any]]:
    """Stream entries as the page reads them: ``{"id", "result"}``."""
    out = []
    for entry in reader.recent(stream_key, count):
        raw = entry.fields.get("result")
        if raw is None:
            logger.warning("%s entry %s has no result field", stream_key, entry.entry_id)
            continue
        out.append({"id": entry.entry_id, "result": asdict(ResultMessage.from_json(raw))})
    return out[::-1] if oldest_first else out


class DashboardHandler(BaseHTTPRequestHandler):
    """Routes one request; the server carries the reader and the page limits."""

    server: DashboardServer
    server_version = "linewatch-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Send access logs to the logging module instead of stderr."""
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _not_found(self, what: str = "not found") -> None:
        self._send_json({"error": what}, HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:
        """Answer HEAD like GET without a body."""
        self.do_GET()

    def do_GET(self) -> None:
        """Dispatch a GET request."""
        url = urlsplit(self.path)
        parts = [part for part in url.path.split("/") if part]
        query = parse_qs(url.query)
        try:
            self._route(url.path, parts, query)
        except redis.RedisError as error:
            logger.warning("redis error on %s: %s", url.path, error)
            self._send_json({"error": "redis unavailable"}, HTTPStatus.SERVICE_UNAVAILABLE)
        except (ValueError, SchemaError) as error:
            logger.warning("bad request or record on %s: %s", url.path, error)
            self._send_json({"error": "bad request or record"}, HTTPStatus.BAD_REQUEST)

    def _route(self, path: str, parts: list[str], query: dict[str, list[str]]) -> None:
        reader = self.server.reader
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, _static("dashboard.html"), "text/html; charset=utf-8")
        elif path == "/static/dashboard.js":
            self._send(HTTPStatus.OK, _static("dashboard.js"), "text/javascript; charset=utf-8")
        elif path == HEALTHZ_PATH:
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == READYZ_PATH:
            ready = reader.ping()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, b"ready\n" if ready else b"redis unavailable\n", "text/plain")
        elif path == "/api/overview":
            self._send_json(self._overview())
        elif len(parts) == 4 and parts[:2] == ["api", "lines"] and is_valid_id(parts[2]):
            count = self._count(query)
            if parts[3] == "results":
                self._send_json(_results(reader, reader.keys.results(parts[2]), count, True))
            elif parts[3] == "alerts":
                self._send_json(_results(reader, reader.keys.alerts(parts[2]), count, False))
            else:
                self._not_found()
        elif len(parts) == 4 and parts[1] in ("frames", "heatmaps") and parts[0] == "api":
            self._image(parts[1], parts[2], parts[3])
        else:
            self._not_found()

    def _count(self, query: dict[str, list[str]]) -> int:
        raw = query.get("count", [str(self.server.default_count)])[0]
        return max(1, min(int(raw), MAX_STREAM_COUNT))

    def _image(self, kind: str, camera: str, name: str) -> None:
        suffix = ".jpg" if kind == "frames" else ".png"
        frame_id = name.removesuffix(suffix)
        if name == frame_id or not (is_valid_id(camera) and is_valid_id(frame_id)):
            self._not_found()
            return
        reader = self.server.reader
        if kind == "frames":
            body, content_type = reader.frame(camera, frame_id), "image/jpeg"
        else:
            body, content_type = reader.heatmap(camera, frame_id), "image/png"
        if body is None:
            self._not_found("expired or unknown frame")
            return
        self._send(HTTPStatus.OK, body, content_type)

    def _overview(self) -> dict[str, Any]:
        reader = self.server.reader
        lines = []
        for line in reader.lines():
            if not is_valid_id(line):
                logger.warning("skipping line with unusable name %r", line)
                continue
            cameras = []
            for camera in reader.cameras(line):
                if is_valid_id(camera):
                    latest = reader.latest(camera)
                    cameras.append({"camera_id": camera,
                                    "latest": None if latest is None else asdict(latest)})
            drift = reader.recent(reader.keys.drift(line), 1)
            lines.append({"line": line, "cameras": cameras,
                          "drift": drift[0].fields if drift else None})
        return {"lines": lines, "refresh_ms": self.server.refresh_ms}


class DashboardServer(ThreadingHTTPServer):
    """HTTP server holding the dashboard's reader and page settings.

    Args:
        address: ``(host, port)`` to bind; port 0 picks a free one.
        reader: Reader of what the workers and the drift monitor stored.
        refresh_ms: How often the page polls for new data.
        default_count: Results per line drawn in the score chart when the page does not
            ask for a count.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        reader: RedisResultReader,
        refresh_ms: int = 2000,
        default_count: int = 300,
    ) -> None:
        super().__init__(address, DashboardHandler)
        self.reader = reader
        self.refresh_ms = refresh_ms
        self.default_count = default_count

    @property
    def url(self) -> str:
        """Base URL of the bound server."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"
