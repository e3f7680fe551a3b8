"""What the inference worker talks to: the protocols its adapters implement.

Production wires Kafka and Redis (``workers.inference.main``); unit tests use the
in-memory twins of ``tests/twins.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pipeline.runtimes import Detector
from pipeline.wire.messages import ConsumedRecord, StoredResult


class FrameSource(Protocol):
    """Where frames come from (a Kafka consumer-group member in production)."""

    def poll(self, timeout_ms: float, max_records: int) -> list[ConsumedRecord]:
        """Up to ``max_records`` records within ``timeout_ms``."""
        ...

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        """Commit (topic, partition) -> next offset."""
        ...

    def pause(self) -> None:
        """Stop fetching, keep the membership."""
        ...

    def resume(self) -> None:
        """Fetch again."""
        ...

    def lag(self) -> Mapping[tuple[str, int], int]:
        """Records behind the end of each assigned (topic, partition)."""
        ...


class ResultSink(Protocol):
    """Where results go (Redis in production)."""

    def store(self, items: Sequence[StoredResult]) -> list[bool]:
        """Store a batch idempotently; raise TransportUnavailableError when down."""
        ...

    def ping(self) -> bool:
        """Whether the store answers now."""
        ...


class DeadLetterSink(Protocol):
    """Where unprocessable frames go (a Kafka topic in production)."""

    def dead_letter(self, record: ConsumedRecord, reason: str, detail: str) -> None:
        """Queue one dead letter."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait until queued dead letters are acknowledged (TransportUnavailableError)."""
        ...


class ModelProvider(Protocol):
    """Gives the current model of a product line."""

    def get(self, line: str) -> Detector:
        """The line's model (ModelNotFoundError when there is none)."""
        ...
