"""Redis adapters: the result sink the worker writes to, and a reader for consumers.

Key layout (prefix ``p`` configurable, see docs/contracts.md and the README)::

    {p}:result:{camera}:{frame_id}    JSON result message              (TTL)
    {p}:heatmap:{camera}:{frame_id}   PNG uint8 heatmap                (TTL)
    {p}:frame:{camera}:{frame_id}     JPEG of the frame                (TTL)
    {p}:latest:{camera}               JSON of the camera's latest result
    {p}:results:{line}                capped stream, field ``result`` = JSON result
    {p}:alerts:{line}                 capped stream of results over threshold
    {p}:lines                         set of product lines seen
    {p}:cameras:{line}                set of cameras seen on a line

Writes are idempotent: one Lua script per frame sets the per-frame keys and appends to
the streams only when the frame's result key did not exist yet, so a replayed frame
overwrites its keys and never duplicates its stream entries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.messages import ResultMessage, validate_id

logger = logging.getLogger(__name__)

#: Redis errors that retrying cannot fix (wrong password, missing ACL permission).
PERMANENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError,
)

_STORE_SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
local ttl = tonumber(ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ttl) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ttl) end
local current = redis.call('GET', KEYS[4])
if (not current) or tonumber(cjson.decode(current)['capture_ts']) <= tonumber(ARGV[5]) then
  redis.call('SET', KEYS[4], ARGV[1])
end
if existed == 0 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'result', ARGV[1])
  if ARGV[6] == '1' then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'result', ARGV[1])
  end
end
redis.call('SADD', KEYS[7], ARGV[7])
redis.call('SADD', KEYS[8], ARGV[8])
return existed
"""


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Builds every key under one prefix (nothing is written outside it)."""

    prefix: str = "linewatch"

    def result(self, camera: str, frame_id: str) -> str:
        """Per-frame result key."""
        validate_id(camera, "camera")
        validate_id(frame_id, "frame id")
        return f"{self.prefix}:result:{camera}:{frame_id}"

    def heatmap(self, camera: str, frame_id: str) -> str:
        """Per-frame heatmap PNG key."""
        return f"{self.prefix}:heatmap:{camera}:{frame_id}"

    def frame(self, camera: str, frame_id: str) -> str:
        """Per-frame JPEG key."""
        return f"{self.prefix}:frame:{camera}:{frame_id}"

    def latest(self, camera: str) -> str:
        """Latest result of a camera."""
        return f"{self.prefix}:latest:{camera}"

    def results(self, line: str) -> str:
        """Capped stream of a line's results."""
        return f"{self.prefix}:results:{validate_id(line, 'product line')}"

    def alerts(self, line: str) -> str:
        """Capped stream of a line's alerts."""
        return f"{self.prefix}:alerts:{validate_id(line, 'product line')}"

    def lines(self) -> str:
        """Set of product lines seen."""
        return f"{self.prefix}:lines"

    def cameras(self, line: str) -> str:
        """Set of cameras seen on a line."""
        return f"{self.prefix}:cameras:{line}"


@dataclass(frozen=True, slots=True)
class StoredResult:
    """Everything the worker writes for one frame.

    Attributes:
        result: The result message.
        heatmap_png: PNG of the uint8 heatmap (may be empty to skip).
        frame_jpeg: The frame's JPEG (may be empty to skip).
    """

    result: ResultMessage
    heatmap_png: bytes = b""
    frame_jpeg: bytes = b""


def connect(url: str, socket_timeout_s: float = 2.0) -> redis.Redis:
    """Create a Redis client (no I/O until first use)."""
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                socket_connect_timeout=socket_timeout_s)


class RedisResultSink:
    """Writes results idempotently; connects lazily; context manager.

    Args:
        url: ``redis://`` or ``rediss://`` URL.
        keys: Key builder (prefix).
        ttl_s: TTL of per-frame keys.
        stream_maxlen: Approximate cap of the results stream.
        alert_stream_maxlen: Approximate cap of the alert stream.
        socket_timeout_s: Socket timeout.
    """

    def __init__(self, url: str, keys: RedisKeys, ttl_s: int = 86400,
                 stream_maxlen: int = 10_000, alert_stream_maxlen: int = 10_000,
                 socket_timeout_s: float = 2.0) -> None:
        self._url = url
        self.keys = keys
        self._ttl_s = ttl_s
        self._stream_maxlen = stream_maxlen
        self._alert_stream_maxlen = alert_stream_maxlen
        self._socket_timeout_s = socket_timeout_s
        self._client: redis.Redis | None = None
        self._script: object | None = None

    def _connection(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self._url, self._socket_timeout_s)
            self._script = self._client.register_script(_STORE_SCRIPT)
        return self._client

    def ping(self) -> bool:
        """True when Redis answers; False when it cannot be reached right now.

        Raises:
            ConfigurationError: Redis refused our credentials (permanent).
        """
        try:
            return bool(self._connection().ping())
        except PERMANENT_REDIS_ERRORS as error:
            self._reset()
            raise ConfigurationError(f"Redis refused our credentials: {error}") from error
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._reset()
            return False

    def store(self, items: Sequence[StoredResult]) -> list[bool]:
        """Write a batch of results in one round trip.

        Args:
            items: Results to store.

        Returns:
            For each item, True when it was new (False: a replay that overwrote).

        Raises:
            TransportUnavailableError: Redis cannot be reached; nothing can be assumed
                stored, the caller retries the whole batch (safe: writes are idempotent).
            ConfigurationError: Redis refused our credentials or permissions (permanent).
        """
        if not items:
            return []
        client = self._connection()
        pipe = client.pipeline(transaction=False)
        for item in items:
            r = item.result
            keys = [
                self.keys.result(r.camera_id, r.frame_id),
                self.keys.heatmap(r.camera_id, r.frame_id),
                self.keys.frame(r.camera_id, r.frame_id), self.keys.latest(r.camera_id),
                self.keys.results(r.product_line), self.keys.alerts(r.product_line),
                self.keys.lines(), self.keys.cameras(r.product_line),
            ]
            args = [
                r.to_json(), item.heatmap_png, item.frame_jpeg, self._ttl_s, repr(r.capture_ts),
                "1" if r.label else "0", r.product_line, r.camera_id,
                self._stream_maxlen, self._alert_stream_maxlen,
            ]
            self._script(keys=keys, args=args, client=pipe)  # type: ignore[operator]
        try:
            existed = pipe.execute()
        except PERMANENT_REDIS_ERRORS as error:
            self._reset()
            raise ConfigurationError(f"Redis refused the write: {error}") from error
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            self._reset()
            raise TransportUnavailableError(f"Redis unavailable: {error}") from error
        except RedisError as error:
            raise TransportUnavailableError(f"Redis refused the write: {error}") from error
        return [int(flag) == 0 for flag in existed]

    def _reset(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except RedisError:
                logger.debug("closing a broken Redis connection failed", exc_info=True)
        self._client = None

    def close(self) -> None:
        """Close the connection."""
        self._reset()

    def __enter__(self) -> RedisResultSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class RedisResultReader:
    """Reads what the worker stored (dashboards, tests, the demo, alert subscribers)."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def results(self, line: str, count: int | None = None) -> list[ResultMessage]:
        """A line's results stream, oldest first."""
        entries = self.client.xrange(self.keys.results(line), count=count)
        return [ResultMessage.from_json(fields[b"result"]) for _, fields in entries]

    def alerts(self, line: str) -> list[ResultMessage]:
        """A line's alert stream, oldest first."""
        entries = self.client.xrange(self.keys.alerts(line))
        return [ResultMessage.from_json(fields[b"result"]) for _, fields in entries]

    def result(self, camera: str, frame_id: str) -> ResultMessage | None:
        """One frame's result."""
        raw = self.client.get(self.keys.result(camera, frame_id))
        return None if raw is None else ResultMessage.from_json(raw)

    def heatmap(self, camera: str, frame_id: str) -> bytes | None:
        """One frame's heatmap PNG."""
        return self.client.get(self.keys.heatmap(camera, frame_id))

    def latest(self, camera: str) -> ResultMessage | None:
        """A camera's latest result."""
        raw = self.client.get(self.keys.latest(camera))
        return None if raw is None else ResultMessage.from_json(raw)

    def stream_length(self, line: str) -> int:
        """Entries in a line's results stream."""
        return int(self.client.xlen(self.keys.results(line)))
