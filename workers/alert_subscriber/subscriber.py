"""Alert subscriber: follows one product line's alert stream as a consumer-group member.

On start it first re-reads its own pending entries (delivered before a crash, never
acknowledged), then new ones; each alert is handled (printed, or POSTed as JSON to
``forward_url``) and acknowledged only after it was handled.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable

import redis

from pipeline.redis.client import UNREACHABLE_ERRORS
from pipeline.redis.streams import StreamGroupReader
from pipeline.retry import Backoff, repeat_until_stopped
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ResultMessage

logger = logging.getLogger(__name__)


class AlertSubscriber:
    """Reads a line's alert stream as one consumer of a group.

    Args:
        client: Redis client (socket timeout above ``block_ms``).
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
        self._stream = keys.alerts(line)
        self._reader = StreamGroupReader(client, group, consumer, block_ms=block_ms)
        self._handle = handle
        self.handled = 0

    def poll(self) -> int:
        """Handle one read's worth of alerts; returns how many were handled."""
        done = 0
        for entry in self._reader.read([self._stream]):
            if entry.fields is not None:  # None: trimmed away while pending
                self._handle(ResultMessage.from_json(entry.fields[b"result"]))
                done += 1
            self._reader.ack(self._stream, entry.entry_id)
        self.handled += done
        return done

    def run(self, stop: threading.Event) -> None:
        """Resume pending alerts, then follow new ones until ``stop``."""
        repeat_until_stopped(self.poll, stop=stop, retry_on=UNREACHABLE_ERRORS,
                             backoff=Backoff(0.5, 10.0), what="reading alerts")


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
