"""Honest evaluation on an MVTec-layout folder: AUROC, pixel AUROC, AUPRO, F1, overlays."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.io import write_png

from model.data import TestSample, read_image, read_mask
from model.detector import AnomalyDetector

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
    """Labels 8-connected regions of a 2-D bool mask (0 = background, 1..K regions)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int64)
    region = torch.from_numpy(mask.astype(bool))
    labels = torch.where(region, torch.arange(1, region.numel() + 1).view(region.shape), 0).float()
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * region
        if torch.equal(grown, labels):
            break
        labels = grown
    _, dense = torch.unique(labels, return_inverse=True)
    return dense.numpy().astype(np.int64)  # background (0) keeps label 0: it is the smallest


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


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one evaluation run.

    Attributes:
        image_auroc: Image-level AUROC.
        pixel_auroc: Pixel-level AUROC over all test images.
        aupro: Area under PRO up to 30% FPR, normalised.
        f1: Image-level F1 at the calibrated threshold.
        precision: Image-level precision at the threshold.
        recall: Image-level recall at the threshold.
        good_false_alarm_rate: Share of good test images flagged.
        image_count: Test images.
        per_class_auroc: Image AUROC of each defect class vs good.
    """

    image_auroc: float
    pixel_auroc: float
    aupro: float
    f1: float
    precision: float
    recall: float
    good_false_alarm_rate: float
    image_count: int
    per_class_auroc: dict[str, float]

    def table(self) -> str:
        """Human-readable metrics table."""
        rows = [
            ("image AUROC", self.image_auroc),
            ("pixel AUROC", self.pixel_auroc),
            ("AUPRO@30%FPR", self.aupro),
            ("F1 @ calibrated threshold", self.f1),
            ("precision", self.precision),
            ("recall", self.recall),
            ("false alarms on good", self.good_false_alarm_rate),
        ]
        rows += [(f"image AUROC [{name}]", value) for name, value in self.per_class_auroc.items()]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in rows)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """Maps a normalised heatmap (0.5 = threshold) to a jet-like RGB uint8 image."""
    x = np.clip(heatmap, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def write_overlay(
    path: Path, image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray | None
) -> None:
    """Writes image | heatmap blended over image | mask side by side as PNG."""
    size = heatmap.shape[0]
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)[0]
    base = resized.permute(1, 2, 0).clamp(0, 255).numpy()
    blended = 0.5 * base + 0.5 * colorize(heatmap)
    mask_rgb = np.zeros_like(base) if mask is None else np.repeat(mask[:, :, None] * 255.0, 3, 2)
    panel = np.concatenate([base, blended, mask_rgb], axis=1).astype(np.uint8)
    write_png(torch.from_numpy(panel).permute(2, 0, 1).contiguous(), str(path))


def evaluate(
    detector: AnomalyDetector,
    samples: Sequence[TestSample],
    *,
    overlay_dir: Path | None = None,
    overlay_count: int = 0,
    batch_size: int = 16,
) -> EvaluationReport:
    """Scores every test sample and computes the metrics.

    Args:
        detector: Fitted detector (its calibrated threshold gives the F1).
        samples: Test samples, e.g. from :func:`model.data.list_test_samples`.
        overlay_dir: Where overlay PNGs go (created); None for none.
        overlay_count: How many overlays to write (spread over the classes).
        batch_size: Images per inference batch.

    Returns:
        The report.
    """
    size = detector.metadata.image_size
    scores, flags, heatmaps, masks = [], [], [], []
    overlay_pick = set()
    if overlay_dir is not None and overlay_count > 0:
        overlay_dir.mkdir(parents=True, exist_ok=True)
        step = max(len(samples) // overlay_count, 1)
        overlay_pick = set(range(0, len(samples), step)[:overlay_count])
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_image(sample.path) for sample in chunk]
        prediction = detector.predict(images)
        for offset, sample in enumerate(chunk):
            mask = (
                read_mask(sample.mask_path, size)
                if sample.mask_path is not None
                else np.zeros((size, size), dtype=bool)
            )
            masks.append(mask)
            if start + offset in overlay_pick and overlay_dir is not None:
                name = f"{sample.defect_class}_{sample.path.stem}.png"
                write_overlay(overlay_dir / name, images[offset], prediction.heatmaps[offset], mask)
        scores.append(prediction.normalized_scores)
        flags.append(prediction.labels)
        heatmaps.append(prediction.heatmaps.astype(np.float32))
    score_array = np.concatenate(scores)
    flag_array = np.concatenate(flags)
    heatmap_array = np.concatenate(heatmaps)
    mask_array = np.stack(masks)
    truth = np.array([sample.is_anomalous for sample in samples])
    classes = sorted({s.defect_class for s in samples if s.is_anomalous})
    good = ~truth
    per_class = {}
    for name in classes:
        chosen = good | np.array([s.defect_class == name for s in samples])
        per_class[name] = auroc(truth[chosen], score_array[chosen])
    true_positive = int((truth & flag_array).sum())
    return EvaluationReport(
        image_auroc=auroc(truth, score_array),
        pixel_auroc=auroc(mask_array.ravel(), heatmap_array.ravel()),
        aupro=aupro(mask_array, heatmap_array),
        f1=f1_score(truth, flag_array),
        precision=true_positive / max(int(flag_array.sum()), 1),
        recall=true_positive / max(int(truth.sum()), 1),
        good_false_alarm_rate=float(flag_array[good].mean()) if good.any() else float("nan"),
        image_count=len(samples),
        per_class_auroc=per_class,
    )
