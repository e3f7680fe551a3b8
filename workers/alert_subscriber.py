"""Alert subscriber: follows one product line's alert stream with a consumer group.

On start it first re-reads its own pending entries (delivered before a crash, never
acknowledged), then new ones; each alert is printed (or POSTed as JSON to
``forward_url``) and acknowledged only after it was handled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

import redis

from pipeline.messages import ResultMessage
from pipeline.process import configure_logging, load_settings, stop_event_on_signals
from pipeline.redis_store import RedisKeys
from pipeline.settings import AlertSubscriberSettings

logger = logging.getLogger(__name__)


class AlertSubscriber:
    """Reads a line's alert stream as one consumer of a group.

    Args:
        client: Redis client.
        keys: Key builder.
        line: Product line.
        group: Consumer group name.
        consumer: This consumer's name (stable across restarts to resume its pending).
        handle: Called with each alert; an exception leaves the alert unacknowledged.
        block_ms: Longest wait for new alerts per read.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, line: str, group: str,
                 consumer: str, handle: Callable[[ResultMessage], None],
                 block_ms: int = 1000) -> None:
        self._client = client
        self._stream = keys.alerts(line)
        self._group = group
        self._consumer = consumer
        self._handle = handle
        self._block_ms = block_ms
        self.handled = 0

    def ensure_group(self) -> None:
        """Create the group at the start of the stream if it does not exist."""
        try:
            self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def poll(self, pending_first: bool = False) -> int:
        """Handle one read's worth of alerts; returns how many were acknowledged."""
        start = "0" if pending_first else ">"
        replies = self._client.xreadgroup(self._group, self._consumer, {self._stream: start},
                                          count=100, block=None if pending_first else
                                          self._block_ms)
        done = 0
        for _, entries in replies or []:
            for entry_id, fields in entries:
                if not fields:  # trimmed away while pending
                    self._client.xack(self._stream, self._group, entry_id)
                    continue
                self._handle(ResultMessage.from_json(fields[b"result"]))
                self._client.xack(self._stream, self._group, entry_id)
                done += 1
        self.handled += done
        return done

    def run(self, stop: threading.Event) -> None:
        """Resume pending alerts, then follow new ones until ``stop``."""
        self.ensure_group()
        while self.poll(pending_first=True):
            pass
        while not stop.is_set():
            try:
                self.poll()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                logger.warning("Redis unavailable (%s); retrying", error)
                stop.wait(1.0)


def print_alert(alert: ResultMessage) -> None:
    """CLI output of one alert."""
    print(f"ALERT line={alert.product_line} camera={alert.camera_id} frame={alert.frame_id} "
          f"score={alert.normalized_score:.3f} model={alert.model_version} "
          f"captured={time.strftime('%H:%M:%S', time.localtime(alert.capture_ts))}", flush=True)


def forwarder(url: str) -> Callable[[ResultMessage], None]:
    """POST each alert as JSON to ``url`` (raises on failure: the alert stays pending)."""
    def forward(alert: ResultMessage) -> None:
        request = urllib.request.Request(url, data=alert.to_json().encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    return forward


def main(argv: Sequence[str] | None = None) -> int:
    """``linewatch-alerts``: print or forward a line's alerts."""
    parser = argparse.ArgumentParser(description="Follow a product line's alert stream.")
    parser.add_argument("--line", help="product line (else LINEWATCH_PRODUCT_LINE)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    overrides = {"product_line": args.line} if args.line else {}
    settings = load_settings(AlertSubscriberSettings, "linewatch-alerts", **overrides)
    if settings is None:
        return 2
    stop = stop_event_on_signals()
    client = redis.Redis.from_url(settings.redis.url.get_secret_value(),
                                  socket_timeout=settings.redis.socket_timeout_s + 2)
    handle = forwarder(settings.forward_url) if settings.forward_url else print_alert
    subscriber = AlertSubscriber(client, RedisKeys(settings.redis.key_prefix),
                                 settings.product_line, settings.group, settings.consumer,
                                 handle, settings.block_ms)
    subscriber.run(stop)
    print(json.dumps({"handled": subscriber.handled}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
