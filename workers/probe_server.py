"""Liveness, readiness and Prometheus endpoints for the operations processes.

Serves ``/healthz`` (the process loop is alive), ``/readyz`` (its dependencies answer) and
``/metrics`` (Prometheus text format from a ``CollectorRegistry``) on a background thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"


class _ProbeHandler(BaseHTTPRequestHandler):
    server: ProbeServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == HEALTHZ_PATH:
            alive = self.server.alive()
            status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, b"ok\n" if alive else b"stalled\n", "text/plain")
        elif path == READYZ_PATH:
            ready = self.server.ready()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, b"ready\n" if ready else b"not ready\n", "text/plain")
        elif path == METRICS_PATH:
            self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")


class ProbeServer(ThreadingHTTPServer):
    """HTTP server for the probe and metrics endpoints.

    Args:
        address: ``(host, port)``; port 0 picks a free port.
        registry: Metrics to expose.
        alive: Returns whether the process loop is making progress.
        ready: Returns whether the process can do its work (dependencies answer).
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        super().__init__(address, _ProbeHandler)
        self.registry = registry
        self.alive = alive
        self.ready = ready
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the bound server."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Serve on a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
