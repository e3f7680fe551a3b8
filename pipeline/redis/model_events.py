"""Model rollout notifications over Redis pub/sub.

The trainer (promotion) and the rollback command publish a small JSON event on the
channel ``{prefix}:models`` after they have moved a line's ``current`` pointer. Each
inference worker runs a :class:`ModelUpdateListener` thread that, on an event, re-reads the
pointer and loads the version it names (:meth:`pipeline.model_store.ModelStore.refresh`);
the worker's loop then serves it from its next batch.

Why Redis pub/sub and not a Kafka control topic: every worker already talks to Redis, and a
broadcast to all workers needs no consumer-group bookkeeping (a Kafka control topic would
need one group per worker, or manual partition assignment, next to the frames group).
Pub/sub is fire-and-forget: a worker that is disconnected at the moment of the promotion
misses the event. Two things cover that: the store re-reads the pointer file every
``model_refresh_s`` seconds anyway (one small file read per line), and the listener
refreshes every line it serves each time it (re)subscribes. The pointer file, not the
event, is the source of truth: an event only says "look now".
"""

from __future__ import annotations

import contextlib
import logging
import threading
from types import TracebackType
from typing import Protocol

import redis

from pipeline.retry import Backoff
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ModelEvent

logger = logging.getLogger(__name__)


def publish_model_event(client: redis.Redis, key_prefix: str, event: ModelEvent) -> int:
    """Publish an event; returns how many subscribers (workers) received it.

    Raises:
        redis.RedisError: Redis unreachable (the pointer already moved; workers still
            pick the version up at their next periodic re-check).
    """
    receivers = int(client.publish(RedisKeys(key_prefix).models(), event.to_json()))
    logger.info("published %s of %s for line %s to %d subscriber(s)", event.event,
                event.version, event.line, receivers)
    return receivers


class RefreshableStore(Protocol):
    """The part of :class:`pipeline.model_store.ModelStore` the listener drives."""

    def refresh(self, line: str) -> str | None:
        """Re-read a line's pointer and load the version it names."""
        ...

    def lines(self) -> list[str]:
        """Lines the store serves."""
        ...


class ModelUpdateListener:
    """Background thread: subscribe to model events and refresh the store on each.

    Reconnects with backoff when Redis goes away and refreshes every served line after
    each (re)subscription, since events sent meanwhile are lost.

    Args:
        client: Redis client (its own connection is used for the subscription).
        key_prefix: Redis key prefix (channel ``{prefix}:models``).
        store: Model store to refresh.
        reconnect_max_s: Longest wait between reconnection attempts.
    """

    def __init__(self, client: redis.Redis, key_prefix: str, store: RefreshableStore,
                 reconnect_max_s: float = 10.0) -> None:
        self._client = client
        self._channel = RedisKeys(key_prefix).models()
        self._store = store
        self._reconnect_max_s = reconnect_max_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscribed = threading.Event()
        self.events_seen = 0

    def start(self) -> ModelUpdateListener:
        """Start the listening thread."""
        self._thread = threading.Thread(target=self._run, name="model-updates", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread (within about a second)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> ModelUpdateListener:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _run(self) -> None:
        backoff = Backoff(0.5, self._reconnect_max_s)
        first = True
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self.subscribed.set()
                logger.info("listening for model events on %s", self._channel)
                if not first:
                    for line in self._store.lines():  # events may have been missed
                        self._store.refresh(line)
                first = False
                backoff.reset()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._handle(message["data"])
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self.subscribed.clear()
                delay = backoff.next_delay()
                logger.warning("model event subscription lost (%s); retrying in %.1fs",
                               error, delay)
                self._stop.wait(delay)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _handle(self, data: bytes | str) -> None:
        try:
            event = ModelEvent.from_json(data)
        except ValueError as error:
            logger.warning("ignoring message on %s: %s", self._channel, error)
            return
        self.events_seen += 1
        logger.info("model event: line %s %s %s", event.line, event.event, event.version)
        if event.line not in self._store.lines():
            return  # not served here; the pointer is read when the first frame comes
        served = self._store.refresh(event.line)
        if served is not None and served != event.version:
            logger.info("line %s: pointer names %s (event said %s); serving the pointer",
                        event.line, served, event.version)
