"""Training data of a product line: good frames from folders or a Kafka topic.

* **Sources**: image folders (``<data_dir>/<line>/good`` by default), or a topic of
  known-good frame records (the frame wire format, filtered by line), read without a
  consumer group from the newest ``max_records`` records per topic, bounded by a timeout.
* **De-duplication**: a static camera sends many near-identical frames; two frames whose
  16x16 grey thumbnails differ by less than ``max_diff`` (mean absolute difference, 0-255)
  count once.
* **Gate split by content hash**: a frame goes to the gate iff the SHA-256 of its pixels
  falls in the first ``gate_fraction`` of the hash space. The same frame lands on the same
  side in every run, so no model of the line is ever trained on a gate frame of the same
  source, and the candidate and the current model are compared on frames neither saw.
* **Sampling**: at most ``max_images`` training frames, a seeded random choice.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.codec import ImageLimits, decode_frame
from pipeline.errors import FrameError, LinewatchError, TransportUnavailableError
from pipeline.messages import FrameMessage
from pipeline.settings import KafkaSettings

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
THUMBNAIL_SIDE = 16


class TrainingDataError(LinewatchError):
    """The training data of a line is missing or unusable."""


@dataclass(frozen=True, slots=True)
class LabelledImage:
    """One image and where it came from.

    Attributes:
        image: HxWx3 uint8 RGB.
        digest: SHA-256 of shape and pixels (hex).
        source: File path or ``topic/partition@offset``.
    """

    image: np.ndarray
    digest: str
    source: str


def image_digest(image: np.ndarray) -> str:
    """SHA-256 over an image's shape and pixels (as ``model.trainer.fingerprint_images``)."""
    array = np.ascontiguousarray(image)
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()


def labelled(image: np.ndarray, source: str) -> LabelledImage:
    """Wrap an image with its digest."""
    return LabelledImage(image, image_digest(image), source)


def list_image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below when ``recursive``), sorted.

    Raises:
        TrainingDataError: The folder does not exist.
    """
    if not folder.is_dir():
        raise TrainingDataError(f"{folder} is not a directory")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_file(path: Path) -> np.ndarray | None:
    """An image file as HxWx3 uint8 RGB, or ``None`` when it cannot be decoded."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_folders(folders: Sequence[Path], recursive: bool = False,
                 progress: bool = False, what: str = "images") -> tuple[list[LabelledImage], int]:
    """Read every image of some folders.

    Returns:
        (images, number of unreadable files skipped).

    Raises:
        TrainingDataError: A folder is missing.
    """
    from tqdm import tqdm

    files = [path for folder in folders for path in list_image_files(folder, recursive)]
    images: list[LabelledImage] = []
    unreadable = 0
    for path in tqdm(files, desc=f"reading {what}", unit="img", disable=not progress,
                     leave=False):
        image = read_image_file(path)
        if image is None:
            logger.warning("skipping unreadable image %s", path)
            unreadable += 1
            continue
        images.append(labelled(image, str(path)))
    return images, unreadable


def thumbnail(image: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail (area average), float32 in 0-255."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE),
                      interpolation=cv2.INTER_AREA).astype(np.float32)


def deduplicate(images: Sequence[LabelledImage],
                max_diff: float) -> tuple[list[LabelledImage], int]:
    """Drop frames that look like an earlier kept frame.

    Args:
        images: Frames in arrival order.
        max_diff: Mean absolute thumbnail difference below which two frames are one
            (0 keeps every frame with distinct pixels).

    Returns:
        (kept frames, number dropped).
    """
    kept: list[LabelledImage] = []
    seen: set[str] = set()
    thumbs = np.empty((0, THUMBNAIL_SIDE * THUMBNAIL_SIDE), np.float32)
    dropped = 0
    for item in images:
        if item.digest in seen:
            dropped += 1
            continue
        thumb = thumbnail(item.image).reshape(1, -1)
        if max_diff > 0 and len(thumbs):
            distance = np.abs(thumbs - thumb).mean(axis=1)
            if float(distance.min()) < max_diff:
                dropped += 1
                continue
        seen.add(item.digest)
        thumbs = np.concatenate([thumbs, thumb])
        kept.append(item)
    return kept, dropped


def in_gate(digest: str, gate_fraction: float) -> bool:
    """Whether a frame belongs to the gate side of the content-hash split."""
    return int(digest[:8], 16) < gate_fraction * 0x1_0000_0000


def split_for_gate(images: Sequence[LabelledImage], gate_fraction: float,
                   trained_by_current: Iterable[str] = ()) -> tuple[list[LabelledImage],
                                                                    list[LabelledImage]]:
    """Split frames into (training, gate) by content hash.

    Frames the current model was trained on (its report's digests) never go to the gate.
    """
    seen_by_current = set(trained_by_current)
    train: list[LabelledImage] = []
    gate: list[LabelledImage] = []
    for item in images:
        if in_gate(item.digest, gate_fraction) and item.digest not in seen_by_current:
            gate.append(item)
        else:
            train.append(item)
    return train, gate


def sample(images: Sequence[LabelledImage], max_count: int, seed: int) -> list[LabelledImage]:
    """At most ``max_count`` frames, a seeded random choice kept in input order."""
    if len(images) <= max_count:
        return list(images)
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), max_count, replace=False))
    return [images[int(i)] for i in chosen]


@dataclass
class CaptureStats:
    """What a topic capture read.

    Attributes:
        records: Records read.
        matched: Frames of the line decoded.
        skipped: Records of the line that could not be parsed or decoded.
        timed_out: Whether the timeout ended the read before the end of the topic.
    """

    records: int = 0
    matched: int = 0
    skipped: int = 0
    timed_out: bool = False
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)


def capture_from_topic(kafka: KafkaSettings, topic: str, line: str, max_records: int,
                       timeout_s: float, limits: ImageLimits | None = None,
                       progress: bool = False) -> tuple[list[LabelledImage], CaptureStats]:
    """Read the line's frames from the newest ``max_records`` records of each partition.

    No consumer group: partitions are assigned directly and read up to the end offsets
    seen at the start, so the capture is bounded even while frames keep arriving.

    Raises:
        TransportUnavailableError: The broker cannot be reached or the topic is unknown.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from tqdm import tqdm

    limits = limits or ImageLimits()
    stats = CaptureStats()
    images: deque[LabelledImage] = deque(maxlen=max_records)
    try:
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=100, **kafka.client_kwargs())
    except KafkaError as error:
        raise TransportUnavailableError(f"Kafka unavailable: {error}") from error
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if not partitions:
            raise TransportUnavailableError(f"topic {topic!r} is unknown to the broker")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        begin = consumer.beginning_offsets(assigned)
        end = consumer.end_offsets(assigned)
        remaining = {}
        for tp in assigned:
            start = max(begin[tp], end[tp] - max_records)
            stats.partitions[tp.partition] = (start, end[tp])
            if end[tp] > start:
                consumer.seek(tp, start)
                remaining[tp] = end[tp]
        total = sum(end[tp] - stats.partitions[tp.partition][0] for tp in assigned)
        with tqdm(total=total, desc=f"capturing {topic}", unit="rec", disable=not progress,
                  leave=False) as bar:
            while remaining and time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=500, max_records=500)
                for tp, messages in batches.items():
                    for message in messages:
                        if tp not in remaining or message.offset >= remaining[tp]:
                            continue
                        stats.records += 1
                        bar.update(1)
                        item = _decode_capture(message, line, limits, stats)
                        if item is not None:
                            images.append(item)
                for tp in list(remaining):
                    if consumer.position(tp) >= remaining[tp]:
                        del remaining[tp]
        stats.timed_out = bool(remaining)
        if stats.timed_out:
            logger.warning("capture of %s stopped by its %.0fs timeout", topic, timeout_s)
    except KafkaError as error:
        raise TransportUnavailableError(f"Kafka unavailable: {error}") from error
    finally:
        consumer.close()
    return list(images), stats


def _decode_capture(message: object, line: str, limits: ImageLimits,
                    stats: CaptureStats) -> LabelledImage | None:
    headers = [(k, v) for k, v in (getattr(message, "headers", None) or [])]
    try:
        frame = FrameMessage.from_record(getattr(message, "key", None), headers,
                                         getattr(message, "value", None))
    except FrameError as error:
        stats.skipped += 1
        logger.debug("skipping record: %s", error)
        return None
    if frame.product_line != line:
        return None
    try:
        image = decode_frame(frame, limits)
    except FrameError as error:
        stats.skipped += 1
        logger.debug("skipping frame %s: %s", frame.frame_id, error)
        return None
    stats.matched += 1
    source = f"{message.topic}/{message.partition}@{message.offset}"  # type: ignore[attr-defined]
    return labelled(image, source)
