"""In-memory twins of the worker's collaborators (unit tests only)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import ModelNotFoundError, TransportUnavailableError
from pipeline.wire.codec import encode_image
from pipeline.wire.messages import ConsumedRecord, Encoding, FrameMessage, StoredResult


@dataclass
class TwinPrediction:
    scores: np.ndarray
    normalized_scores: np.ndarray
    labels: np.ndarray
    heatmaps: np.ndarray


@dataclass
class TwinMetadata:
    version: str
    product_line: str
    image_size: int = 32


class BrightSpotDetector:
    """Scores an image by its brightest pixel: white spots are anomalies."""

    def __init__(self, line: str, version: str = "v1") -> None:
        self.metadata = TwinMetadata(version, line)
        self.calls: list[int] = []

    def predict(self, images: Sequence[np.ndarray]) -> TwinPrediction:
        self.calls.append(len(images))
        scores = np.array([img.max() / 255.0 for img in images], dtype=np.float32)
        heat = np.stack([np.full((32, 32), s, np.float32) for s in scores])
        return TwinPrediction(scores, scores, scores >= 0.5, heat)


class TwinModels:
    def __init__(self, **models: BrightSpotDetector) -> None:
        self.models = models

    def get(self, line: str) -> BrightSpotDetector:
        if line not in self.models:
            raise ModelNotFoundError(f"no model for {line}")
        return self.models[line]


@dataclass
class TwinSource:
    records: list[ConsumedRecord]
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    commit_log: list[dict[tuple[str, int], int]] = field(default_factory=list)
    paused: bool = False
    pause_count: int = 0

    def poll(self, timeout_ms: float, max_records: int) -> list[ConsumedRecord]:
        if self.paused or not self.records:
            time.sleep(min(timeout_ms, 5) / 1000.0)
            return []
        taken, self.records = self.records[:max_records], self.records[max_records:]
        now = time.monotonic()
        return [ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value, r.headers, now)
                for r in taken]

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        self.committed.update(next_offsets)
        self.commit_log.append(dict(next_offsets))
        return True

    def pause(self) -> None:
        self.paused = True
        self.pause_count += 1

    def lag(self) -> dict[tuple[str, int], int]:
        return {("frames", 0): len(self.records)}

    def resume(self) -> None:
        self.paused = False


@dataclass
class TwinSink:
    fail_times: int = 0
    stored: dict[tuple[str, str], StoredResult] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 0

    def store(self, items: Sequence[StoredResult]) -> list[bool]:
        self.attempts += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            raise TransportUnavailableError("twin Redis is down")
        fresh = []
        for item in items:
            key = (item.result.camera_id, item.result.frame_id)
            fresh.append(key not in self.stored)
            if key not in self.stored:
                self.order.append(key)
            self.stored[key] = item
        return fresh

    def ping(self) -> bool:
        return self.fail_times == 0


@dataclass
class TwinDeadLetters:
    letters: list[tuple[ConsumedRecord, str, str]] = field(default_factory=list)
    flushed: int = 0

    def dead_letter(self, record: ConsumedRecord, reason: str, detail: str) -> None:
        self.letters.append((record, reason, detail))

    def flush(self, timeout_s: float) -> None:
        self.flushed += 1


def make_frame(camera: str, line: str, index: int, *, spot: bool = False, size: int = 32,
               encoding: Encoding = Encoding.JPEG) -> FrameMessage:
    image = np.full((size, size, 3), 60, np.uint8)
    if spot:
        image[8:16, 8:16] = 255
    return FrameMessage(camera_id=camera, product_line=line, frame_id=f"f{index:06d}",
                        capture_ts=time.time(), encoding=encoding, width=size, height=size,
                        payload=encode_image(image, encoding, 95))


def as_record(frame: FrameMessage, partition: int, offset: int,
              topic: str = "frames") -> ConsumedRecord:
    return ConsumedRecord(topic, partition, offset, frame.key, frame.payload, frame.headers(),
                          time.monotonic())
