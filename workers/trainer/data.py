"""Where a line's training frames come from: image folders or a topic of known-good frames.

Folders: ``<data_dir>/<line>/good`` by default (:data:`pipeline.files.IMAGE_SUFFIXES`).
Topic: records in the frame wire format, filtered by line, the newest ``max_records`` of
each partition read without a consumer group and bounded by a timeout
(:class:`pipeline.kafka.consumer.TopicTail`). Reviewed false alarms: the frames operators
marked as false alarms in the console (``{p}:false-alarms:{line}`` in Redis, newest
first). Every frame keeps a digest of its pixels and where it came from. How frames are
then chosen: :mod:`workers.trainer.selection`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import redis

from pipeline.errors import FrameError, LinewatchError, TransportUnavailableError
from pipeline.files import list_image_files, read_image_file
from pipeline.kafka.consumer import TopicTail
from pipeline.redis.client import connect
from pipeline.settings import KafkaSettings, RedisSettings
from pipeline.wire.codec import ImageLimits, decode_frame
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ConsumedRecord, FrameMessage
from pipeline.wire.operations import Review

logger = logging.getLogger(__name__)


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


def load_folders(folders: Sequence[Path], recursive: bool = False,
                 progress: bool = False, what: str = "images") -> tuple[list[LabelledImage], int]:
    """Read every image of some folders.

    Returns:
        (images, number of unreadable files skipped).

    Raises:
        TrainingDataError: A folder is missing.
    """
    from tqdm import tqdm

    try:
        files = [path for folder in folders for path in list_image_files(folder, recursive)]
    except NotADirectoryError as error:
        raise TrainingDataError(str(error)) from error
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


def capture_from_topic(kafka: KafkaSettings, topic: str, line: str, max_records: int,
                       timeout_s: float, limits: ImageLimits | None = None,
                       progress: bool = False) -> tuple[list[LabelledImage], CaptureStats]:
    """The line's frames among the newest ``max_records`` records of each partition.

    Raises:
        TransportUnavailableError: The broker cannot be reached or the topic is unknown.
    """
    from tqdm import tqdm

    limits = limits or ImageLimits()
    stats = CaptureStats()
    images: deque[LabelledImage] = deque(maxlen=max_records)
    tail = TopicTail(kafka, topic, max_records, timeout_s)
    with tqdm(desc=f"capturing {topic}", unit="rec", disable=not progress, leave=False) as bar:
        def start(total: int) -> None:
            bar.reset(total=total)

        for record in tail.records(on_start=start):
            stats.records += 1
            bar.update(1)
            item = _decode_capture(record, line, limits, stats)
            if item is not None:
                images.append(item)
    stats.timed_out = tail.timed_out
    return list(images), stats


def _decode_capture(record: ConsumedRecord, line: str, limits: ImageLimits,
                    stats: CaptureStats) -> LabelledImage | None:
    try:
        frame = FrameMessage.from_record(record.key, record.headers, record.value)
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
    return labelled(image, f"{record.topic}/{record.partition}@{record.offset}")


def load_false_alarms(settings: RedisSettings, line: str,
                      max_frames: int) -> tuple[list[LabelledImage], int]:
    """The newest ``max_frames`` frames operators marked as false alarms on ``line``.

    A frame whose review was changed since (to ``acknowledged``) is left out, and a frame
    marked twice counts once.

    Returns:
        (frames, entries skipped as unreadable), oldest first. Each frame's source is
        ``false-alarm:<camera>/<frame id>``.

    Raises:
        TransportUnavailableError: Redis cannot be reached.
    """
    keys = RedisKeys(settings.key_prefix)
    client = connect(settings)
    try:
        entries = client.xrevrange(keys.false_alarms(line), count=max_frames)
        current = client.hgetall(keys.reviews(line))
    except redis.RedisError as error:
        raise TransportUnavailableError(f"reviewed false alarms unreadable: {error}") from error
    finally:
        client.close()
    frames: list[LabelledImage] = []
    seen: set[str] = set()
    skipped = 0
    for entry_id, fields in reversed(entries):
        try:
            review = Review.from_json(fields[b"review"])
            jpeg = np.frombuffer(fields[b"frame"], np.uint8)
            now = current.get(review.key.encode())
            if now is not None and Review.from_json(now).verdict != "false_alarm":
                continue  # the operator changed their mind
        except (KeyError, FrameError) as error:
            logger.warning("false alarm %r skipped: %s", entry_id, error)
            skipped += 1
            continue
        if review.key in seen:
            continue
        seen.add(review.key)
        bgr = cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if jpeg.size else None
        if bgr is None:
            logger.warning("false alarm %s skipped: its frame does not decode", review.key)
            skipped += 1
            continue
        frames.append(labelled(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                               f"false-alarm:{review.key}"))
    return frames, skipped
