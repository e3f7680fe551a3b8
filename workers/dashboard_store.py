"""Read-only view of the Redis key layout for the operator's dashboard.

Keys (``{p}`` is the configured prefix, see ``docs/contracts.md``)::

    {p}:lines                        set of product lines seen
    {p}:cameras:{line}               set of cameras seen on a line
    {p}:latest:{camera}              JSON of the camera's latest result
    {p}:frame:{camera}:{frame_id}    JPEG of the frame (TTL)
    {p}:heatmap:{camera}:{frame_id}  PNG uint8 heatmap (TTL)
    {p}:results:{line}               capped stream, field ``result`` = JSON result message
    {p}:alerts:{line}                capped stream of results over threshold
    {p}:drift:{line}                 stream of drift events (``workers.drift_monitor``)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.errors import SchemaError
from pipeline.messages import validate_id

logger = logging.getLogger(__name__)


def is_identifier(value: str) -> bool:
    """Tell whether ``value`` is an acceptable camera id, line name or frame id.

    The same rule as the pipeline's (:func:`pipeline.messages.validate_id`), so anything a
    worker stored can be asked for, and nothing from a URL can reach outside the layout.

    Args:
        value: Candidate identifier from a URL.

    Returns:
        ``True`` if it is 1-128 characters of ``[A-Za-z0-9._-]`` starting alphanumeric.
    """
    try:
        validate_id(value, "identifier")
    except SchemaError:
        return False
    return True


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a results, alerts or drift stream.

    Attributes:
        entry_id: Redis stream id (``<ms>-<seq>``).
        payload: Decoded JSON of the entry (the ``result`` field, or all fields of a drift
            event).
    """

    entry_id: str
    payload: dict[str, Any]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class DashboardStore:
    """Reads what the inference workers and the drift monitor write to Redis.

    Args:
        client: Redis client; responses must not be decoded (images are binary).
        prefix: Key prefix.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def key(self, *parts: str) -> str:
        """Build a key under the prefix.

        Args:
            *parts: Key parts after the prefix.

        Returns:
            ``{prefix}:{part}:{part}...``.
        """
        return ":".join((self._prefix, *parts))

    def ping(self) -> bool:
        """Check that Redis answers.

        Returns:
            ``True`` if Redis answered the ping.
        """
        try:
            return bool(self._client.ping())
        except redis.RedisError as error:
            logger.warning("redis ping failed: %s", error)
            return False

    def lines(self) -> list[str]:
        """List the product lines seen, sorted."""
        return sorted(_text(line) for line in self._client.smembers(self.key("lines")))

    def cameras(self, line: str) -> list[str]:
        """List the cameras seen on ``line``, sorted."""
        members = self._client.smembers(self.key("cameras", line))
        return sorted(_text(camera) for camera in members)

    def latest(self, camera: str) -> dict[str, Any] | None:
        """Return the camera's latest result message, or ``None`` if there is none."""
        raw = self._client.get(self.key("latest", camera))
        return None if raw is None else json.loads(raw)

    def frame_jpeg(self, camera: str, frame_id: str) -> bytes | None:
        """Return the stored JPEG of a frame, or ``None`` once it has expired."""
        return self._client.get(self.key("frame", camera, frame_id))

    def heatmap_png(self, camera: str, frame_id: str) -> bytes | None:
        """Return the stored PNG heatmap of a frame, or ``None`` once it has expired."""
        return self._client.get(self.key("heatmap", camera, frame_id))

    def _result_stream(self, stream: str, line: str, count: int) -> list[StreamEntry]:
        entries = self._client.xrevrange(self.key(stream, line), count=count)
        out = []
        for entry_id, fields in entries:
            raw = fields.get(b"result")
            if raw is None:
                logger.warning("%s entry %s has no result field", stream, _text(entry_id))
                continue
            out.append(StreamEntry(_text(entry_id), json.loads(raw)))
        return out

    def results(self, line: str, count: int) -> list[StreamEntry]:
        """Return the line's most recent results, oldest first.

        Args:
            line: Product line.
            count: Maximum number of entries.
        """
        return list(reversed(self._result_stream("results", line, count)))

    def alerts(self, line: str, count: int) -> list[StreamEntry]:
        """Return the line's most recent alerts, newest first.

        Args:
            line: Product line.
            count: Maximum number of entries.
        """
        return self._result_stream("alerts", line, count)

    def drift_events(self, line: str, count: int) -> list[StreamEntry]:
        """Return the line's most recent drift events, newest first.

        Args:
            line: Product line.
            count: Maximum number of entries.
        """
        entries = self._client.xrevrange(self.key("drift", line), count=count)
        return [
            StreamEntry(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
            for entry_id, fields in entries
        ]
