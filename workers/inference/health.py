"""The worker's health record for the operator's console, published to Redis.

The worker loop updates a :class:`HealthState` as it goes (lag after each poll, the model
version of each line it served, frames without a model, dead letters, stored results, the
paused flag); :class:`HealthPublisher` writes a snapshot as a
:class:`pipeline.wire.operations.WorkerHealth` to ``{p}:health:{worker}`` every
``interval_s`` (with a TTL of a few intervals, so a dead worker's record disappears) and
scores the worker in ``{p}:workers``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping

import redis

from pipeline.wire.layout import RedisKeys
from pipeline.wire.operations import WorkerHealth

logger = logging.getLogger(__name__)


class HealthState:
    """What the worker loop reports as it runs (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lag: dict[str, int] = {}
        self._models: dict[str, str] = {}
        self._no_model: dict[str, set[str]] = {}
        self._dead_letters: Counter[str] = Counter()
        self._stored = 0
        self._paused = False

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Records behind per (topic, partition), after a poll."""
        with self._lock:
            self._lag = {f"{topic}/{partition}": int(n) for (topic, partition), n in lag.items()}

    def served(self, line: str, version: str) -> None:
        """A line's frames were judged by ``version``."""
        with self._lock:
            self._models[line] = version
            self._no_model.pop(line, None)

    def missing_model(self, line: str, camera: str) -> None:
        """A frame of ``line`` from ``camera`` found no model."""
        with self._lock:
            self._no_model.setdefault(line, set()).add(camera)

    def dead_letter(self, reason: str) -> None:
        """One more dead letter for ``reason``."""
        with self._lock:
            self._dead_letters[reason] += 1

    def stored(self, count: int) -> None:
        """``count`` more results stored."""
        with self._lock:
            self._stored += count

    def set_paused(self, paused: bool) -> None:
        """Consumption paused or resumed."""
        with self._lock:
            self._paused = paused

    def stored_count(self) -> int:
        """Results stored since the worker started."""
        with self._lock:
            return self._stored

    def snapshot(self, worker_id: str, frames_per_s: float) -> tuple[WorkerHealth, int]:
        """The record to publish now, and the stored-results count it was taken at.

        Lines without a model are reported for one interval, then forgotten until a frame
        finds none again.
        """
        with self._lock:
            record = WorkerHealth(
                worker_id=worker_id, ts=time.time(), frames_per_s=round(frames_per_s, 2),
                lag=dict(self._lag), paused=self._paused,
                dead_letters=dict(self._dead_letters), models=dict(self._models),
                no_model={line: sorted(cams) for line, cams in self._no_model.items()})
            self._no_model = {}
            return record, self._stored


class HealthPublisher:
    """Publishes a worker's :class:`HealthState` every ``interval_s`` on its own thread.

    Args:
        client: Redis client.
        keys: Key builder.
        worker_id: The worker's name.
        state: The state the worker updates.
        interval_s: Publishing interval; the record lives ``3 * interval_s``.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, worker_id: str, state: HealthState,
                 interval_s: float = 5.0) -> None:
        self._client = client
        self._key = keys.health(worker_id)  # refuses a worker id unfit for a key, at start
        self._keys = keys
        self._worker_id = worker_id
        self._state = state
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._last = (time.monotonic(), 0)

    def publish(self) -> WorkerHealth:
        """Publish one record now (raises ``redis.RedisError`` when Redis is away)."""
        now = time.monotonic()
        then, stored_then = self._last
        rate = (self._state.stored_count() - stored_then) / max(now - then, 1e-6)
        record, stored = self._state.snapshot(self._worker_id, rate)
        self._last = (now, stored)
        ttl = max(1, round(3 * self._interval_s))
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._key, record.to_json(), ex=ttl)
        pipe.zadd(self._keys.workers(), {self._worker_id: record.ts})
        pipe.execute()
        return record

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.publish()
            except redis.RedisError as error:
                logger.debug("health record not published: %s", error)

    def __enter__(self) -> HealthPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 5)
        self._client.close()
