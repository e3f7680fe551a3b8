"""``linewatch-dashboard``: serve the operator's page until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pipeline.redis.client import connect
from pipeline.redis.results import RedisResultReader
from pipeline.wire.layout import RedisKeys
from workers import startup
from workers.dashboard.server import DashboardServer
from workers.dashboard.settings import DashboardSettings

logger = logging.getLogger(__name__)

PROGRAM = "linewatch-dashboard"


def _run(started: startup.Started[DashboardSettings]) -> int:
    settings = started.settings
    client = connect(settings.redis)
    server = DashboardServer(
        (settings.http.host, settings.http.port),
        RedisResultReader(client, RedisKeys(settings.redis.key_prefix)),
        refresh_ms=settings.refresh_ms, default_count=settings.chart_points)
    serving = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    serving.start()
    logger.info("dashboard on %s", server.url)
    try:
        while not started.stop.wait(1.0):
            pass
        logger.info("stopping")
    finally:
        server.shutdown()
        server.server_close()
        client.close()
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the operator's page."""
    arguments = startup.parser(PROGRAM, "Serve the operator's page over Redis.")
    return startup.run_process(PROGRAM, arguments, DashboardSettings, _run, argv)
