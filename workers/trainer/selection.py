"""Which frames a training run uses, and for what.

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

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import TransportUnavailableError
from pipeline.wire.layout import report_path
from workers.trainer.data import (
    LabelledImage,
    TrainingDataError,
    capture_from_topic,
    load_false_alarms,
    load_folders,
)
from workers.trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 16


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
class TrainingData:
    """Frames of one run and how they were chosen.

    Attributes:
        train: Training frames (the fit holds out its own calibration share of these).
        gate_good: Good frames no model of the line was trained on.
        defects: Labelled defective frames.
        false_alarms: Frames operators marked as false alarms (also in ``train``).
        counts: Frames read, unreadable, duplicates, per split.
        sources: Where the frames came from.
        notes: Remarks for the report (e.g. false alarms that could not be read).
    """

    train: list[LabelledImage]
    gate_good: list[LabelledImage]
    defects: list[LabelledImage]
    false_alarms: list[LabelledImage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _default_folder(settings: TrainerSettings, line: str, name: str) -> tuple[Path, ...]:
    if settings.data_dir is None:
        return ()
    folder = settings.data_dir / line / name
    return (folder,) if folder.is_dir() else ()


def trained_digests(root: Path, line: str, version: str | None) -> list[str]:
    """Digests of the frames a stored version was trained on (from its report)."""
    if version is None:
        return []
    try:
        report = json.loads(report_path(root, line, version).read_text())
    except (OSError, ValueError):
        return []
    return [str(d) for d in report.get("train_digests", [])]


def collect_data(settings: TrainerSettings, line: str, current_version: str | None, *,
                 good_dirs: Sequence[Path] = (), gate_dirs: Sequence[Path] = (),
                 defect_dirs: Sequence[Path] = (), capture_topic: str | None = None,
                 progress: bool = True) -> TrainingData:
    """Gather, de-duplicate, split and sample the run's frames.

    Raises:
        TrainingDataError: No source, or too few frames to fit.
        TransportUnavailableError: The capture topic cannot be read.
    """
    good_folders = tuple(good_dirs)
    topic = capture_topic or settings.capture_topic
    if not good_folders and topic is None:
        good_folders = _default_folder(settings, line, "good")
    if not good_folders and topic is None:
        raise TrainingDataError(f"no good frames for line {line!r}: give --good DIR, "
                                f"--from-topic TOPIC, LINEWATCH_DATA_DIR or "
                                f"LINEWATCH_CAPTURE_TOPIC")
    pool, unreadable = load_folders(good_folders, progress=progress, what="good frames")
    sources = {"good": [str(f) for f in good_folders]}
    counts = {"good_read": len(pool), "unreadable": unreadable}
    if topic is not None:
        if settings.kafka is None:
            raise TrainingDataError("capturing from a topic needs LINEWATCH_KAFKA__* settings")
        captured, stats = capture_from_topic(settings.kafka, topic, line,
                                             settings.capture_max_records,
                                             settings.capture_timeout_s, progress=progress)
        pool += captured
        sources["good"].append(f"kafka:{topic}")
        counts.update(captured=stats.matched, capture_skipped=stats.skipped,
                      capture_records=stats.records)
    unique, duplicates = deduplicate(pool, settings.dedupe_max_diff)
    seen_by_current = set(trained_digests(settings.model_store, line, current_version))
    train_pool, gate_good = split_for_gate(unique, settings.gate.gate_fraction, seen_by_current)
    gate_folders = tuple(gate_dirs) or _default_folder(settings, line, "gate-good")
    extra_gate, bad = load_folders(gate_folders, progress=progress, what="gate frames")
    # neither model may have seen a gate frame
    extra_gate = [item for item in extra_gate if item.digest not in seen_by_current]
    gate_only = {item.digest for item in extra_gate}
    train_pool = [item for item in train_pool if item.digest not in gate_only]
    gate_good = [item for item in gate_good if item.digest not in gate_only]
    defect_folders = tuple(defect_dirs) or _default_folder(settings, line, "defects")
    defects, bad_defects = load_folders(defect_folders, recursive=True,
                                        progress=progress, what="defective frames")
    train = sample(train_pool, settings.max_images, settings.fit.seed)
    sampled = len(train)
    # reviewed false alarms are good frames the current model got wrong: all of them train
    reviewed: list[LabelledImage] = []
    bad_reviewed = 0
    notes = []
    if settings.max_false_alarms:
        try:
            reviewed, bad_reviewed = load_false_alarms(settings.redis, line,
                                                       settings.max_false_alarms)
        except TransportUnavailableError as error:
            notes.append(f"trained without the reviewed false alarms: {error}")
            logger.warning(notes[-1])
    in_train = {item.digest for item in train}
    train += [item for item in reviewed if item.digest not in in_train]
    if len(train) < 4:
        raise TrainingDataError(f"only {len(train)} distinct training frames for line {line!r}")
    sources.update(gate_good=[str(f) for f in gate_folders],
                   defects=[str(f) for f in defect_folders])
    counts.update(duplicates=duplicates, unique=len(unique), train=len(train),
                  train_not_sampled=len(train_pool) - sampled,
                  gate_from_split=len(gate_good), gate_extra=len(extra_gate),
                  defects=len(defects), false_alarms=len(reviewed),
                  unreadable=unreadable + bad + bad_defects + bad_reviewed)
    if settings.max_false_alarms:
        sources["false_alarms"] = [f"redis:{settings.redis.key_prefix}:false-alarms:{line}"]
    return TrainingData(train, gate_good + extra_gate, defects, reviewed, counts, sources,
                        notes)
