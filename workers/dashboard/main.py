"""``linewatch-dashboard``: serve the operator's console until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.redis.client import connect
from pipeline.redis.results import RedisResultReader
from pipeline.wire.layout import RedisKeys
from workers import startup
from workers.dashboard.console import Console
from workers.dashboard.server import DashboardServer
from workers.dashboard.settings import DashboardSettings

logger = logging.getLogger(__name__)

PROGRAM = "linewatch-dashboard"


def _run(started: startup.Started[DashboardSettings]) -> int:
    settings = started.settings
    client = connect(settings.redis)
    console = Console(RedisResultReader(client, RedisKeys(settings.redis.key_prefix)),
                      offline_after_s=settings.offline_after_s,
                      anomaly_window_s=settings.anomaly_window_s)
    try:
        with DashboardServer(settings, console) as server:
            logger.info("console on %s (hosts %s)", server.url, settings.allowed_hosts)
            while not started.stop.wait(1.0):
                pass
            logger.info("stopping")
    finally:
        client.close()
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the operator's console."""
    arguments = startup.parser(PROGRAM, "Serve the operator's console over Redis.")
    return startup.run_process(PROGRAM, arguments, DashboardSettings, _run, argv)
