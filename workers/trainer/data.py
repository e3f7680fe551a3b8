"""Where a line's training frames come from: image folders or a topic of known-good frames.

Folders: ``<data_dir>/<line>/good`` by default (:data:`pipeline.files.IMAGE_SUFFIXES`).
Topic: records in the frame wire format, filtered by line, the newest ``max_records`` of
each partition read without a consumer group and bounded by a timeout
(:class:`pipeline.kafka.consumer.TopicTail`). Every frame keeps a digest of its pixels and
where it came from. How frames are then chosen: :mod:`workers.trainer.selection`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import FrameError, LinewatchError
from pipeline.files import list_image_files, read_image_file
from pipeline.kafka.consumer import TopicTail
from pipeline.settings import KafkaSettings
from pipeline.wire.codec import ImageLimits, decode_frame
from pipeline.wire.messages import ConsumedRecord, FrameMessage

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
