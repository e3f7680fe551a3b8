"""The worker's result sink and the reader of what it stored (layout: pipeline.wire.layout).

Writes are idempotent: one Lua script per frame sets the per-frame keys and appends to
the streams (and counts the frame in its camera's per-minute counters) only when the
frame's result key did not exist yet, so a replayed frame overwrites its keys and never
duplicates its stream entries or its counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import redis
from redis.exceptions import RedisError

from pipeline.errors import ConfigurationError, TransportUnavailableError
from pipeline.redis.client import PERMANENT_REDIS_ERRORS, UNREACHABLE_ERRORS, connect, ping
from pipeline.settings import RedisSettings
from pipeline.wire.layout import MINUTE_COUNT_TTL_S, MINUTES_KEPT, RedisKeys
from pipeline.wire.messages import ResultMessage, StoredResult, reused_frame_id

logger = logging.getLogger(__name__)

_STORE_SCRIPT = """
local function decoded(raw)
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return {}
end
local json, rk, hk, fk, status = ARGV[1], KEYS[1], KEYS[2], KEYS[3], 0
local prior = redis.call('GET', rk)
if prior then
  local old_digest = decoded(prior)['content_digest']
  if ARGV[11] ~= '' and type(old_digest) == 'string' and old_digest ~= ''
      and old_digest ~= ARGV[11] then
    -- the same frame id with different content: a new frame under its own id
    json, rk, hk, fk, status = ARGV[12], KEYS[9], KEYS[10], KEYS[11], 2
    prior = redis.call('GET', rk)
  end
end
local old_label = false
if prior then
  old_label = decoded(prior)['label'] == true
  status = 1
end
local ttl = tonumber(ARGV[4])
redis.call('SET', rk, json, 'EX', ttl)
if ARGV[2] ~= '' then redis.call('SET', hk, ARGV[2], 'EX', ttl) end
if ARGV[3] ~= '' then redis.call('SET', fk, ARGV[3], 'EX', ttl) end
local current = redis.call('GET', KEYS[4])
local current_ts = current and tonumber(decoded(current)['capture_ts'])
-- "latest" follows capture time, but a stored time beyond now + the allowed lead
-- (written before the window existed, or by a skewed clock) never pins it
if (not current_ts) or current_ts <= tonumber(ARGV[5]) or current_ts > tonumber(ARGV[13]) then
  redis.call('SET', KEYS[4], json)
end
if status ~= 1 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'result', json)
  if ARGV[6] == '1' then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'result', json)
  end
  -- per-minute frame and anomaly counts of the camera (the console's rates); a replay is
  -- not counted twice
  local minute = tonumber(ARGV[15])
  redis.call('HINCRBY', KEYS[12], 'n:' .. minute, 1)
  if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[12], 'a:' .. minute, 1) end
  local old = minute - tonumber(ARGV[16])
  redis.call('HDEL', KEYS[12], 'n:' .. old, 'a:' .. old)
  redis.call('EXPIRE', KEYS[12], ARGV[14])
elseif ARGV[6] == '1' and not old_label then
  -- a replay judged anomalous where the first verdict was not: the alert still goes out
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'result', json)
end
redis.call('SADD', KEYS[7], ARGV[7])
redis.call('SADD', KEYS[8], ARGV[8])
return status
"""

#: What the store script did with one result.
STORED_NEW, STORED_REPLAY, STORED_REUSED_ID = 0, 1, 2


class RedisResultSink:
    """Writes results idempotently; connects lazily; context manager.

    A replay (same camera, frame id and content digest) overwrites its keys and adds no
    stream entry; the same frame id with different content is stored as a new frame under
    :func:`~pipeline.wire.messages.reused_frame_id`. An anomalous verdict always reaches
    the alert stream. A camera's ``latest`` follows capture time, except that a stored
    capture time more than ``max_capture_lead_s`` ahead of now never pins it.

    Args:
        settings: Redis section (URL, prefix, TTL, stream caps, timeouts).
        max_capture_lead_s: How far ahead of now a capture time may be.
    """

    def __init__(self, settings: RedisSettings, max_capture_lead_s: float = 300.0) -> None:
        self._settings = settings
        self._max_lead_s = max_capture_lead_s
        self.reused_ids = 0
        self.keys = RedisKeys(settings.key_prefix)
        self._client: redis.Redis | None = None
        self._script: object | None = None

    def _connection(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self._settings)
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
        except UNREACHABLE_ERRORS:
            self._reset()
            return False

    def store(self, items: Sequence[StoredResult]) -> list[bool]:
        """Write a batch of results in one round trip.

        Args:
            items: Results to store.

        Returns:
            For each item, True when it was new (False: a replay that overwrote); a
            reused frame id with new content is new.

        Raises:
            TransportUnavailableError: Redis cannot be reached; nothing can be assumed
                stored, the caller retries the whole batch (safe: writes are idempotent).
            ConfigurationError: Redis refused our credentials or permissions (permanent).
        """
        if not items:
            return []
        settings = self._settings
        client = self._connection()
        pipe = client.pipeline(transaction=False)
        latest_cap = repr(time.time() + self._max_lead_s)
        for item in items:
            r = item.result
            other = reused_frame_id(r.frame_id, r.content_digest or "0" * 12)
            keys = [
                self.keys.result(r.camera_id, r.frame_id),
                self.keys.heatmap(r.camera_id, r.frame_id),
                self.keys.frame(r.camera_id, r.frame_id), self.keys.latest(r.camera_id),
                self.keys.results(r.product_line), self.keys.alerts(r.product_line),
                self.keys.lines(), self.keys.cameras(r.product_line),
                self.keys.result(r.camera_id, other), self.keys.heatmap(r.camera_id, other),
                self.keys.frame(r.camera_id, other), self.keys.minutes(r.camera_id),
            ]
            args = [
                r.to_json(), item.heatmap_png, item.frame_jpeg, settings.result_ttl_s,
                repr(r.capture_ts), "1" if r.label else "0", r.product_line, r.camera_id,
                settings.stream_maxlen, settings.alert_stream_maxlen, r.content_digest,
                replace(r, frame_id=other).to_json(), latest_cap, MINUTE_COUNT_TTL_S,
                int(r.capture_ts // 60), MINUTES_KEPT,
            ]
            self._script(keys=keys, args=args, client=pipe)  # type: ignore[operator]
        try:
            existed = pipe.execute()
        except PERMANENT_REDIS_ERRORS as error:
            self._reset()
            raise ConfigurationError(f"Redis refused the write: {error}") from error
        except UNREACHABLE_ERRORS as error:
            self._reset()
            raise TransportUnavailableError(f"Redis unavailable: {error}") from error
        except RedisError as error:
            raise TransportUnavailableError(f"Redis refused the write: {error}") from error
        statuses = [int(flag) for flag in existed]
        self.reused_ids += statuses.count(STORED_REUSED_ID)
        return [status != STORED_REPLAY for status in statuses]

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


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of a results, alerts or drift stream.

    Attributes:
        entry_id: Redis stream id (``<ms>-<seq>``).
        fields: The entry's fields, decoded as text.
    """

    entry_id: str
    fields: dict[str, str]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisResultReader:
    """Reads what the workers and the drift monitor stored (dashboard, demo, tests).

    Args:
        client: Redis client (responses not decoded: images are binary).
        keys: Key builder (prefix).
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def ping(self) -> bool:
        """Whether Redis answers (a failure is logged, not raised)."""
        return ping(self.client)

    def results(self, line: str, count: int | None = None) -> list[ResultMessage]:
        """A line's results stream, oldest first."""
        entries = self.client.xrange(self.keys.results(line), count=count)
        return [ResultMessage.from_json(fields[b"result"]) for _, fields in entries]

    def alerts(self, line: str) -> list[ResultMessage]:
        """A line's alert stream, oldest first."""
        entries = self.client.xrange(self.keys.alerts(line))
        return [ResultMessage.from_json(fields[b"result"]) for _, fields in entries]

    def recent(self, stream_key: str, count: int) -> list[StreamEntry]:
        """The newest ``count`` entries of a stream, newest first."""
        entries = self.client.xrevrange(stream_key, count=count)
        return [StreamEntry(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
                for entry_id, fields in entries]

    def result(self, camera: str, frame_id: str) -> ResultMessage | None:
        """One frame's result."""
        raw = self.client.get(self.keys.result(camera, frame_id))
        return None if raw is None else ResultMessage.from_json(raw)

    def heatmap(self, camera: str, frame_id: str) -> bytes | None:
        """One frame's heatmap PNG (``None`` once expired)."""
        return self.client.get(self.keys.heatmap(camera, frame_id))

    def frame(self, camera: str, frame_id: str) -> bytes | None:
        """One frame's JPEG (``None`` once expired)."""
        return self.client.get(self.keys.frame(camera, frame_id))

    def latest(self, camera: str) -> ResultMessage | None:
        """A camera's latest result."""
        raw = self.client.get(self.keys.latest(camera))
        return None if raw is None else ResultMessage.from_json(raw)

    def lines(self) -> list[str]:
        """Product lines seen, sorted."""
        return sorted(_text(line) for line in self.client.smembers(self.keys.lines()))

    def cameras(self, line: str) -> list[str]:
        """Cameras seen on a line, sorted."""
        return sorted(_text(camera) for camera in self.client.smembers(self.keys.cameras(line)))

    def stream_length(self, line: str) -> int:
        """Entries in a line's results stream."""
        return int(self.client.xlen(self.keys.results(line)))
