"""``linewatch-alerts``: print or forward a line's alerts until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from pipeline.redis.client import connect
from pipeline.wire.layout import RedisKeys
from workers import startup
from workers.alert_subscriber.settings import AlertSubscriberSettings
from workers.alert_subscriber.subscriber import AlertSubscriber, forwarder, print_alert

PROGRAM = "linewatch-alerts"


def _line(args: argparse.Namespace) -> dict[str, str]:
    return {"product_line": args.line} if args.line else {}


def _run(started: startup.Started[AlertSubscriberSettings]) -> int:
    settings = started.settings
    client = connect(settings.redis, blocking_ms=settings.block_ms)
    handle = forwarder(settings.forward_url) if settings.forward_url else print_alert
    subscriber = AlertSubscriber(client, RedisKeys(settings.redis.key_prefix),
                                 settings.product_line, settings.group, settings.consumer,
                                 handle, settings.block_ms)
    try:
        subscriber.run(started.stop)
    finally:
        client.close()
    print(json.dumps({"handled": subscriber.handled}))
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Print or forward a line's alerts."""
    arguments = startup.parser(PROGRAM, "Follow a product line's alert stream.")
    arguments.add_argument("--line", help="product line (else LINEWATCH_PRODUCT_LINE)")
    return startup.run_process(PROGRAM, arguments, AlertSubscriberSettings, _run, argv,
                               overrides=_line)
