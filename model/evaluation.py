"""Honest evaluation: AUROC, pixel AUROC, AUPRO, recall at fixed false-alarm rates, overlays."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from model.data import EvaluationSample
from model.detector import AnomalyDetector
from model.errors import DatasetError
from model.visualization import write_overlay

logger = logging.getLogger(__name__)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction).

    Args:
        labels: ``[N]`` bool, True for the positive (anomalous) class.
        scores: ``[N]`` scores, higher means more anomalous.

    Raises:
        ValueError: When only one class is present.
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties
    unique_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    unique_ends = np.r_[unique_starts[1:], scores.size]
    average = (unique_starts + unique_ends + 1) / 2.0
    ranks[order] = np.repeat(average, unique_ends - unique_starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Labels 8-connected regions of a 2-D bool mask (0 = background, 1..K regions).

    Works on runs of True pixels per row: runs in neighbouring rows that touch (diagonals
    included) are merged with a union-find, so the cost follows the number of runs, not the
    length of a region (a thin crack across the image is as cheap as a blob).
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive ends, in the same (row, column) order
    parent = list(range(len(starts)))

    def find(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    first = np.searchsorted(rows, np.arange(height + 1))
    for row in range(height - 1):
        upper, upper_end = int(first[row]), int(first[row + 1])
        lower, lower_end = upper_end, int(first[row + 2])
        while upper < upper_end and lower < lower_end:
            if starts[upper] <= ends[lower] and starts[lower] <= ends[upper]:
                a, b = find(upper), find(lower)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[upper] < ends[lower]:
                upper += 1
            else:
                lower += 1
    labels = np.zeros((height, width), dtype=np.int64)
    if not parent:
        return labels
    _, dense = np.unique([find(run) for run in range(len(parent))], return_inverse=True)
    for run, region in enumerate(dense):
        labels[rows[run], starts[run] : ends[run]] = region + 1
    return labels


def aupro(masks: np.ndarray, heatmaps: np.ndarray, max_fpr: float = 0.3, steps: int = 600) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    Args:
        masks: ``[N, H, W]`` bool ground truth.
        heatmaps: ``[N, H, W]`` anomaly maps.
        max_fpr: Upper false positive rate of the integration.
        steps: Thresholds sampled between FPR 0 and ``max_fpr``.
    """
    negatives = np.sort(heatmaps[~masks].astype(np.float64))
    if negatives.size == 0:
        raise ValueError("AUPRO needs normal pixels")
    fprs = np.linspace(0.0, max_fpr, steps + 1)
    # threshold giving each FPR: the (1 - fpr) quantile of normal pixel scores
    thresholds = np.quantile(negatives, 1.0 - fprs)
    actual_fpr = 1.0 - np.searchsorted(negatives, thresholds, side="left") / negatives.size
    overlaps = []
    for mask, heatmap in zip(masks, heatmaps, strict=True):
        labels = connected_components(mask)
        for region in range(1, labels.max() + 1):
            values = np.sort(heatmap[labels == region].astype(np.float64))
            covered = 1.0 - np.searchsorted(values, thresholds, side="left") / values.size
            overlaps.append(covered)
    if not overlaps:
        raise ValueError("AUPRO needs anomalous regions")
    pro = np.mean(overlaps, axis=0)
    order = np.argsort(actual_fpr)
    fpr_sorted = np.clip(actual_fpr[order], 0.0, max_fpr)
    return float(np.trapezoid(pro[order], fpr_sorted) / max_fpr)


def f1_score(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the anomalous class."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    true_positive = int((labels & predicted).sum())
    denominator = 2 * true_positive + int((labels ^ predicted).sum())
    return 2.0 * true_positive / denominator if denominator else 0.0


FALSE_ALARM_RATES = (0.001, 0.01, 0.05)
"""False-alarm rates at which recall is reported (0.1 %, 1 %, 5 %)."""


def false_alarm_threshold(good_scores: np.ndarray, rate: float) -> float:
    """The strictest threshold allowing ``rate`` false alarms on the good images' scores.

    At most ``floor(rate * N_good)`` good images score strictly above it (ties aside); with
    fewer than ``1 / rate`` good images it is their maximum.

    Raises:
        ValueError: With no good score or a rate outside ``[0, 1)``.
    """
    good = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if good.size == 0 or not 0.0 <= rate < 1.0:
        raise ValueError("need good scores and a rate in [0, 1)")
    return float(good[int(np.floor(rate * good.size + 1e-9))])


def recall_at_false_alarm_rate(
    good_scores: np.ndarray, defect_scores: np.ndarray, rate: float
) -> float:
    """Share of defective images caught at the strictest threshold allowing ``rate`` alarms.

    The threshold is set on the good images' own scores: at most ``floor(rate * N_good)``
    good images may score above it; a defective image counts when it scores strictly
    above it. With fewer than ``1 / rate`` good images no alarm is allowed at all.

    Args:
        good_scores: ``[N_good]`` scores of good images.
        defect_scores: ``[N_defect]`` scores of defective images.
        rate: Allowed false-alarm rate in ``[0, 1)``.

    Raises:
        ValueError: With no good or no defective score, or a rate outside ``[0, 1)``.
    """
    defects = np.asarray(defect_scores, dtype=np.float64).ravel()
    if defects.size == 0:
        raise ValueError("need good and defective scores and a rate in [0, 1)")
    return float(np.mean(defects > false_alarm_threshold(good_scores, rate)))


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one evaluation run.

    Attributes:
        image_auroc: Image-level AUROC.
        pixel_auroc: Pixel-level AUROC over all test images (None without masks).
        aupro: Area under PRO up to 30% FPR, normalised (None without masks).
        f1: Image-level F1 at the calibrated threshold.
        precision: Image-level precision at the threshold.
        recall: Image-level recall at the threshold.
        good_false_alarm_rate: Share of good test images flagged at the calibrated
            threshold: the false-alarm rate the model really has on these unseen images.
        target_false_alarm_rate: The rate the model's threshold was calibrated for.
        recall_at_false_alarms: Recall at the thresholds that allow each rate of
            :data:`FALSE_ALARM_RATES` on the good test images.
        image_count: Test images.
        good_count: Good test images.
        per_class_auroc: Image AUROC of each defect class vs good.
        per_class_recall: Recall at 1 % false alarms of each defect class.
    """

    image_auroc: float
    pixel_auroc: float | None
    aupro: float | None
    f1: float
    precision: float
    recall: float
    good_false_alarm_rate: float
    target_false_alarm_rate: float
    recall_at_false_alarms: dict[float, float]
    image_count: int
    good_count: int
    per_class_auroc: dict[str, float]
    per_class_recall: dict[str, float]

    @property
    def has_masks(self) -> bool:
        """True when pixel metrics were computed."""
        return self.pixel_auroc is not None

    def table(self) -> str:
        """Human-readable metrics table (one ``name  value`` line per metric)."""
        rows: list[tuple[str, str]] = [("image AUROC", f"{self.image_auroc:.3f}")]
        if self.pixel_auroc is not None and self.aupro is not None:
            rows += [("pixel AUROC", f"{self.pixel_auroc:.3f}"), ("AUPRO", f"{self.aupro:.3f}")]
        else:
            rows.append(("pixel AUROC", "n/a (no masks: image metrics only)"))
        for rate in FALSE_ALARM_RATES:
            value = self.recall_at_false_alarms.get(rate)
            if value is not None:
                rows.append((f"recall at {rate * 100:g}% false alarms", f"{value:.3f}"))
        rows += [
            ("false alarm rate on unseen good", f"{self.good_false_alarm_rate:.3f}"),
            ("target false alarm rate", f"{self.target_false_alarm_rate:.3f}"),
            ("recall at the calibrated threshold", f"{self.recall:.3f}"),
            ("precision at the calibrated threshold", f"{self.precision:.3f}"),
            ("F1 at the calibrated threshold", f"{self.f1:.3f}"),
        ]
        for name, value in self.per_class_auroc.items():
            recall = self.per_class_recall.get(name)
            detail = f"{value:.3f}" + (
                f"  (recall at 1% false alarms {recall:.3f})" if recall is not None else ""
            )
            rows.append((f"image AUROC [{name}]", detail))
        return "\n".join(f"{name}  {value}" for name, value in rows)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (rates as strings)."""
        values = dict(self.__dict__)
        values["recall_at_false_alarms"] = {
            f"{rate:g}": value for rate, value in self.recall_at_false_alarms.items()
        }
        return values


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return (F.interpolate(tensor, size=(size, size), mode="nearest")[0, 0] > 0.5).numpy()


def evaluate(
    detector: AnomalyDetector,
    samples: Sequence[EvaluationSample],
    *,
    overlay_dir: Path | None = None,
    overlay_count: int = 0,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> EvaluationReport:
    """Scores every test sample and computes the metrics.

    Pixel metrics need a mask for every defective sample; without them the report holds
    image metrics only (``pixel_auroc`` and ``aupro`` are None).

    Args:
        detector: Fitted detector (its calibrated threshold gives F1 and the actual
            false-alarm rate).
        samples: Labelled images, e.g. from :func:`model.data.list_test_samples`; at least
            one good and one defective.
        overlay_dir: Where overlay PNGs go (created); None for none.
        overlay_count: How many overlays to write (spread over the samples).
        batch_size: Images per inference batch.
        progress: Called with the number of images scored after every batch.

    Returns:
        The report.

    Raises:
        DatasetError: Without both good and defective samples.
    """
    truth = np.array([sample.is_anomalous for sample in samples], dtype=bool)
    if truth.all() or not truth.any():
        raise DatasetError("evaluation needs good and defective test images")
    with_masks = all(sample.has_mask for sample in samples if sample.is_anomalous)
    size = detector.metadata.image_size
    scores, flags, heatmaps, masks = [], [], [], []
    overlay_pick = set()
    if overlay_dir is not None and overlay_count > 0:
        overlay_dir.mkdir(parents=True, exist_ok=True)
        step = max(len(samples) // overlay_count, 1)
        overlay_pick = set(range(0, len(samples), step)[:overlay_count])
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        loaded = [sample.load() for sample in chunk]
        prediction = detector.predict([image for image, _ in loaded])
        for offset, (sample, (image, mask)) in enumerate(zip(chunk, loaded, strict=True)):
            resized = _resize_mask(mask, size) if mask is not None else np.zeros((size, size), bool)
            if with_masks:
                masks.append(resized)
                heatmaps.append(prediction.heatmaps[offset].astype(np.float32))
            if start + offset in overlay_pick and overlay_dir is not None:
                name = f"{sample.name.replace('/', '_')}.png"
                shown = resized if mask is not None else None
                write_overlay(overlay_dir / name, image, prediction.heatmaps[offset], shown)
        scores.append(prediction.normalized_scores)
        flags.append(prediction.labels)
        if progress is not None:
            progress(min(start + batch_size, len(samples)))
    score_array = np.concatenate(scores)
    flag_array = np.concatenate(flags)
    good = ~truth
    classes = sorted({s.defect_class for s in samples if s.is_anomalous})
    per_class, per_class_recall = {}, {}
    for name in classes:
        chosen = np.array([s.defect_class == name for s in samples])
        per_class[name] = auroc(truth[good | chosen], score_array[good | chosen])
        per_class_recall[name] = recall_at_false_alarm_rate(
            score_array[good], score_array[chosen], 0.01
        )
    pixel_auroc = aupro_value = None
    if with_masks:
        mask_array, heatmap_array = np.stack(masks), np.stack(heatmaps)
        pixel_auroc = auroc(mask_array.ravel(), heatmap_array.ravel())
        aupro_value = aupro(mask_array, heatmap_array)
    true_positive = int((truth & flag_array).sum())
    return EvaluationReport(
        image_auroc=auroc(truth, score_array),
        pixel_auroc=pixel_auroc,
        aupro=aupro_value,
        f1=f1_score(truth, flag_array),
        precision=true_positive / max(int(flag_array.sum()), 1),
        recall=true_positive / max(int(truth.sum()), 1),
        good_false_alarm_rate=float(flag_array[good].mean()),
        target_false_alarm_rate=detector.metadata.calibration.target_false_alarm_rate,
        recall_at_false_alarms={
            rate: recall_at_false_alarm_rate(score_array[good], score_array[truth], rate)
            for rate in FALSE_ALARM_RATES
        },
        image_count=len(samples),
        good_count=int(good.sum()),
        per_class_auroc=per_class,
        per_class_recall=per_class_recall,
    )
