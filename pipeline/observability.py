"""Metrics (prometheus_client) and the ``/healthz`` ``/readyz`` ``/metrics`` server.

Each process builds its own registry (:func:`new_registry`: its metrics plus the process,
platform and garbage-collector collectors) and serves it with :class:`HealthServer`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the latency and duration histograms.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def new_registry() -> CollectorRegistry:
    """A registry holding the process, platform and garbage-collector metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def metric_total(registry: CollectorRegistry, name: str) -> float:
    """Sum of every sample called ``name`` (all label values), 0 when there is none."""
    return sum(sample.value for metric in registry.collect() for sample in metric.samples
               if sample.name == name)


class HealthServer:
    """``/healthz`` (alive), ``/readyz`` (ready to work), ``/metrics`` in a daemon thread.

    Args:
        registry: Metrics to serve (:func:`new_registry`).
        is_alive: Liveness check.
        is_ready: Readiness check.
        host: Bind address (localhost by default).
        port: Port; 0 picks a free one (see :attr:`port` after :meth:`start`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        is_alive: Callable[[], bool],
        is_ready: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._registry = registry
        self._is_alive = is_alive
        self._is_ready = is_ready
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """Bound port (after start)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._reply(200, generate_latest(outer._registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = outer._is_alive()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"dead\n")
                elif self.path == "/readyz":
                    ok = outer._is_ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("http: " + format, *args)

        self._server = ThreadingHTTPServer(self._address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="health-http"
        )
        self._thread.start()
        logger.info("health/metrics endpoint on http://%s:%d", self._address[0], self.port)
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
