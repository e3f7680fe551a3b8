"""Dynamic micro-batching in the way Triton's dynamic batcher works.

A batch is ready when it holds ``max_batch_size`` items, or when its oldest item has
waited ``max_wait_s``. Pure logic: the caller supplies arrival times and the clock.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from pipeline.errors import FrameError
from pipeline.wire.messages import ConsumedRecord, ResultMessage
from workers.inference.admission import Admitted

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """FIFO of items that forms batches by size or by the oldest item's wait.

    Args:
        max_batch_size: Most items per batch.
        max_wait_s: Longest the oldest item waits for a fuller batch.
    """

    def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size >= 1 and max_wait_s >= 0 are required")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._items: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, arrived: float) -> None:
        """Queue an item that arrived at ``arrived`` (monotonic seconds)."""
        self._items.append((arrived, item))

    def room(self) -> int:
        """Items that still fit before the batch is full (0 when a batch is ready by size)."""
        return max(0, self.max_batch_size - len(self._items))

    def time_until_ready(self, now: float) -> float | None:
        """Seconds until a batch is due (0 when due now, None when empty)."""
        if not self._items:
            return None
        if len(self._items) >= self.max_batch_size:
            return 0.0
        return max(0.0, self._items[0][0] + self.max_wait_s - now)

    def ready(self, now: float) -> bool:
        """True when a batch is due."""
        wait = self.time_until_ready(now)
        return wait is not None and wait <= 0.0

    def take(self) -> list[T]:
        """Remove and return up to ``max_batch_size`` items, oldest first."""
        count = min(self.max_batch_size, len(self._items))
        return [self._items.popleft()[1] for _ in range(count)]


@dataclass(slots=True)
class DecodingBatch:
    """A batch whose frames are being decoded in the pool."""

    records: list[ConsumedRecord]
    decoding: list[Future[Admitted | FrameError]]
    started: float


@dataclass(slots=True)
class PublishJob:
    """One batch handed from the model loop to the publisher."""

    results: list[ResultMessage] = field(default_factory=list)
    heatmaps: list[np.ndarray] = field(default_factory=list)
    frame_jpegs: list[bytes | np.ndarray] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    dead_letters: int = 0
