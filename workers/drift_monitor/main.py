"""``linewatch-drift-monitor``: follow every line's results and raise drift alerts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack

from pipeline.observability import new_registry
from pipeline.redis.client import connect, ping
from workers import startup
from workers.drift_monitor.monitor import DriftMonitor, ModelStoreReference
from workers.drift_monitor.settings import DriftSettings

PROGRAM = "linewatch-drift-monitor"


def _run(started: startup.Started[DriftSettings]) -> int:
    settings = started.settings
    client = connect(settings.redis, blocking_ms=settings.block_ms)
    registry = new_registry()
    monitor = DriftMonitor(
        client, settings.redis.key_prefix, ModelStoreReference(settings.model_store),
        settings.drift.to_config(), registry, group=settings.consumer_group,
        consumer=settings.consumer_name, lines=settings.lines, block_ms=settings.block_ms,
        batch_size=settings.batch_size, drift_stream_maxlen=settings.drift_stream_maxlen)
    probe = connect(settings.redis)  # readiness pings must not wait behind a blocking read
    stall_s = max(30.0, 10 * settings.block_ms / 1000)

    with ExitStack() as stack:
        stack.callback(client.close)
        stack.callback(probe.close)
        startup.serve_health(stack, settings.http, registry,
                             lambda: time.monotonic() - monitor.last_progress < stall_s,
                             lambda: ping(probe))
        monitor.run(started.stop)
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the drift monitor until SIGTERM or SIGINT."""
    arguments = startup.parser(PROGRAM, "Follow each line's results and raise drift alerts.")
    return startup.run_process(PROGRAM, arguments, DriftSettings, _run, argv)
