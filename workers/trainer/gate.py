"""The gate: when a candidate may replace a line's current model.

Both models are scored on the same gate frames, which neither was trained on: the false
alarm rate at each model's own calibrated threshold on good frames, and, with labelled
defective frames, the detection rate and the AUROC. Both are also scored on the frames
operators marked as false alarms (the candidate was trained on them): the share each still
flags, which the candidate may not raise above the current model's. :func:`judge` lists
the reasons to refuse (empty: promote).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from workers.trainer.settings import GateSettings


@dataclass(frozen=True)
class GateFigures:
    """One model's figures on the gate frames.

    Attributes:
        version: Model version.
        good_frames: Good gate frames scored.
        false_alarm_rate: Share of them flagged at the model's calibrated threshold.
        defect_frames: Labelled defective frames scored.
        detection_rate: Share of those flagged (``None`` without defective frames).
        auroc: Good vs defective, from the raw scores (``None`` without defective frames).
        reviewed_frames: Frames operators marked as false alarms, scored.
        reviewed_flagged_rate: Share of them still flagged (``None`` without any).
    """

    version: str
    good_frames: int
    false_alarm_rate: float
    defect_frames: int = 0
    detection_rate: float | None = None
    auroc: float | None = None
    reviewed_frames: int = 0
    reviewed_flagged_rate: float | None = None


def score_on_gate(detector: Any, good: Sequence[np.ndarray], defects: Sequence[np.ndarray],
                  progress: bool = False, chunk: int = 16) -> GateFigures:
    """Score a detector on the gate frames.

    Args:
        detector: Fitted detector (``predict`` -> scores, labels).
        good: Good gate frames, HxWx3 uint8 RGB.
        defects: Labelled defective frames (may be empty).
        progress: Show a progress bar.
        chunk: Frames per ``predict`` call.

    Returns:
        The figures.
    """
    from tqdm import tqdm

    from model.evaluation import auroc

    version = str(detector.metadata.version)
    frames = list(good) + list(defects)
    scores = np.empty(len(frames), np.float64)
    labels = np.empty(len(frames), bool)
    with tqdm(total=len(frames), desc=f"scoring {version}", unit="img", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(frames), chunk):
            prediction = detector.predict(frames[start:start + chunk])
            scores[start:start + chunk] = prediction.scores
            labels[start:start + chunk] = prediction.labels
            bar.update(len(frames[start:start + chunk]))
    n_good = len(good)
    figures = GateFigures(version, n_good, float(labels[:n_good].mean()) if n_good else 1.0)
    if defects:
        truth = np.r_[np.zeros(n_good, bool), np.ones(len(defects), bool)]
        figures = GateFigures(version, n_good, figures.false_alarm_rate, len(defects),
                              float(labels[n_good:].mean()),
                              auroc(truth, scores) if n_good else None)
    return figures


def with_reviewed(figures: GateFigures, detector: Any,
                  false_alarms: Sequence[np.ndarray], chunk: int = 16) -> GateFigures:
    """``figures`` plus the share of reviewed false alarms ``detector`` still flags."""
    if not false_alarms:
        return figures
    flagged = 0
    for start in range(0, len(false_alarms), chunk):
        flagged += int(np.sum(detector.predict(list(false_alarms[start:start + chunk])).labels))
    return replace(figures, reviewed_frames=len(false_alarms),
                   reviewed_flagged_rate=flagged / len(false_alarms))


def judge(candidate: GateFigures, current: GateFigures | None,
          bounds: GateSettings) -> list[str]:
    """Reasons to refuse the candidate (empty: it may be promoted)."""
    reasons = []
    if candidate.good_frames < bounds.min_good_frames:
        reasons.append(f"only {candidate.good_frames} gate frames "
                       f"(at least {bounds.min_good_frames} needed)")
    if candidate.false_alarm_rate > bounds.max_false_alarm_rate:
        reasons.append(f"false alarm rate {candidate.false_alarm_rate:.3f} > "
                       f"{bounds.max_false_alarm_rate:.3f}")
    if candidate.detection_rate is not None and (
            candidate.detection_rate < bounds.min_detection_rate):
        reasons.append(f"detection rate {candidate.detection_rate:.3f} < "
                       f"{bounds.min_detection_rate:.3f}")
    if candidate.auroc is not None and candidate.auroc < bounds.min_auroc:
        reasons.append(f"AUROC {candidate.auroc:.3f} < {bounds.min_auroc:.3f}")
    if current is None:
        return reasons
    if candidate.reviewed_flagged_rate is not None and current.reviewed_flagged_rate is not None \
            and candidate.reviewed_flagged_rate > current.reviewed_flagged_rate:
        reasons.append(f"flags {candidate.reviewed_flagged_rate:.3f} of the reviewed false "
                       f"alarms, more than the current model's "
                       f"{current.reviewed_flagged_rate:.3f}")
    if candidate.false_alarm_rate > current.false_alarm_rate + bounds.max_false_alarm_increase:
        reasons.append(f"false alarm rate {candidate.false_alarm_rate:.3f} exceeds the current "
                       f"model's {current.false_alarm_rate:.3f} by more than "
                       f"{bounds.max_false_alarm_increase:.3f}")
    if candidate.detection_rate is not None and current.detection_rate is not None and (
            candidate.detection_rate < current.detection_rate - bounds.max_detection_drop):
        reasons.append(f"detection rate {candidate.detection_rate:.3f} is below the current "
                       f"model's {current.detection_rate:.3f} by more than "
                       f"{bounds.max_detection_drop:.3f}")
    if candidate.auroc is not None and current.auroc is not None and (
            candidate.auroc < current.auroc - bounds.max_auroc_drop):
        reasons.append(f"AUROC {candidate.auroc:.3f} is below the current model's "
                       f"{current.auroc:.3f} by more than {bounds.max_auroc_drop:.3f}")
    return reasons
