"""Consumer-group reads of Redis streams (alert subscribers, the drift monitor).

A member first re-reads its own pending entries (delivered before a crash or a restart,
never acknowledged), stream by stream until none is left, then new entries. The caller
acknowledges what it handled (:meth:`StreamGroupReader.ack`), so an entry is never lost
between a read and its handling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """One entry read for the group.

    Attributes:
        stream: Stream key.
        entry_id: Stream id.
        fields: Entry fields; ``None`` when a pending entry was trimmed from a capped stream
            (acknowledge it and move on).
    """

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes] | None


class StreamGroupReader:
    """One member of a consumer group over one or more streams.

    Args:
        client: Redis client (its socket timeout must exceed ``block_ms``; see
            :func:`pipeline.redis.client.connect`).
        group: Consumer group name (created at the start of each stream when missing).
        consumer: This member's name (stable across restarts to resume its pending).
        block_ms: Longest wait of one read of new entries.
        count: Most entries read per stream and read.
    """

    def __init__(self, client: redis.Redis, group: str, consumer: str, block_ms: int = 1000,
                 count: int = 100) -> None:
        self._client = client
        self._group = group
        self._consumer = consumer
        self._block_ms = block_ms
        self._count = count
        self._grouped: set[str] = set()
        self._pending_drained: set[str] = set()

    def read(self, streams: Sequence[str]) -> list[GroupEntry]:
        """Read one batch: own pending entries while any are left, else new ones (blocking).

        Raises:
            redis.RedisError: Redis failed (the caller retries; nothing was acknowledged).
        """
        for stream in streams:
            self._ensure_group(stream)
        pending = [s for s in streams if s not in self._pending_drained]
        if pending:
            entries = self._read({s: "0" for s in pending}, block=None)
            with_entries = {entry.stream for entry in entries}
            self._pending_drained.update(s for s in pending if s not in with_entries)
            if entries:
                return entries
        return self._read({s: ">" for s in streams}, block=self._block_ms)

    def ack(self, stream: str, *entry_ids: bytes) -> None:
        """Acknowledge handled entries of one stream."""
        if entry_ids:
            self._client.xack(stream, self._group, *entry_ids)

    def _read(self, streams: dict[str, str], block: int | None) -> list[GroupEntry]:
        response = self._client.xreadgroup(self._group, self._consumer, streams,
                                           count=self._count, block=block)
        entries = []
        for raw_key, items in response or []:
            stream = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            entries += [GroupEntry(stream, entry_id, fields or None) for entry_id, fields in items]
        return entries

    def _ensure_group(self, stream: str) -> None:
        if stream in self._grouped:
            return
        try:
            self._client.xgroup_create(stream, self._group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self._group, stream)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._grouped.add(stream)
