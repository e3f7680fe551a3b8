"""The HTTP servers the processes really run, started on a free loopback port."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.observability import HealthServer, new_registry
from pipeline.redis.results import RedisResultReader
from pipeline.settings import RedisSettings
from pipeline.wire.layout import RedisKeys
from workers.dashboard.console import Console
from workers.dashboard.server import DashboardServer
from workers.dashboard.settings import AuthSettings, DashboardSettings

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
        settings = DashboardSettings(
            redis=RedisSettings(url="redis://127.0.0.1:1/0", key_prefix="probe-check"),
            auth=AuthSettings(password="probe-check-password"), http={"port": 0})
        console = Console(RedisResultReader(client, RedisKeys("probe-check")))
        with DashboardServer(settings, console) as server:
            yield server.url
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
