"""The HTTP servers the processes really run, started on a free loopback port."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.observability import HealthServer, new_registry
from pipeline.redis.results import RedisResultReader
from pipeline.wire.layout import RedisKeys
from workers.dashboard.server import DashboardServer

#: Processes whose endpoints are served by pipeline.observability.HealthServer.
HEALTH_SERVER_PROCESSES = {"worker", "producer", "drift-monitor"}


@contextmanager
def serving(process: str) -> Iterator[str]:
    """Start the process's HTTP server (no Kafka/Redis behind it) and yield its base URL."""
    if process == "dashboard":
        # Nothing listens on port 1: /readyz answers 503, which is still a served route.
        client = redis.Redis(
            host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        server = DashboardServer(("127.0.0.1", 0), RedisResultReader(client,
                                                                     RedisKeys("probe-check")))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.url
        finally:
            server.shutdown()
            server.server_close()
        return
    if process not in HEALTH_SERVER_PROCESSES:
        raise ValueError(f"{process} serves no HTTP endpoints")
    with HealthServer(new_registry(), is_alive=lambda: True, is_ready=lambda: False) as health:
        yield f"http://127.0.0.1:{health.port}"


def status_of(url: str) -> int:
    """HTTP status of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
