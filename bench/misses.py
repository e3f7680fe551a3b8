"""Issue 12: which good images set the 1% false-alarm point, and which defects fall below it.

Scores ``<data>/test`` with a saved model (``--model``, an artifact of ``linewatch-model
fit`` or ``bench/ensemble.py``) and prints the good images that score highest (the
threshold ``recall at 1% false alarms`` uses is ``model.evaluation.false_alarm_threshold``),
then every defective image at or below that threshold with its size, its mask's area and
the mask's distance to the nearest image edge (in % of the image's shorter side), and a
count of caught and missed defects per type, at the edge (mask within 6% of it), inside, or
without a mask (image-labelled data).
Labels are read here only to explain a fitted model's figures, never to fit one.

    python bench/misses.py --model runs/ensemble/efficientnet_lite0-s0.safetensors
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from variants import DEFAULT_DATA

from model.artifact import load_artifact
from model.data import list_test_samples
from model.evaluation import false_alarm_threshold

EDGE_SHARE = 0.06
SHOWN_GOOD = 8


def edge_distance(mask: np.ndarray) -> float:
    """Distance of the mask's bounding box to the nearest edge, as a share of the short side."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    gap = min(ys.min(), xs.min(), height - 1 - ys.max(), width - 1 - xs.max())
    return float(gap) / min(height, width)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="saved artifact")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rate", type=float, default=0.01, help="false-alarm rate")
    args = parser.parse_args()
    detector = load_artifact(args.model)
    samples = list_test_samples(args.data)
    rows = []
    for sample in samples:
        image, mask = sample.load()
        maps, scores = detector.score(detector.preprocess([image]))
        cell = tuple(int(v) for v in np.unravel_index(int(maps[0].argmax()), maps.shape[-2:]))
        score = float(detector.metadata.calibration.normalize(scores.numpy())[0])
        rows.append((sample, image.shape[:2], mask, score, cell))
    grid = tuple(maps.shape[-2:])
    good = sorted((row for row in rows if not row[0].is_anomalous), key=lambda r: -r[3])
    threshold = false_alarm_threshold(np.array([row[3] for row in good]), args.rate)
    allowed = sum(row[3] > threshold for row in good)
    print(
        f"{len(good)} good images; at {args.rate:.1%} false alarms {allowed} score above "
        f"the threshold {threshold:.3f} (normalised scores, model {args.model.name})"
    )
    print(f"highest good images (score map's max at cell y, x of {grid}):")
    for sample, shape, _, score, cell in good[:SHOWN_GOOD]:
        print(f"  {score:6.3f}  {sample.path.name:24s} {shape[0]}x{shape[1]}  cell {cell}")
    counts: Counter = Counter()
    print("defective images at or below the threshold (missed):")
    for sample, shape, mask, score, _ in sorted(
        (row for row in rows if row[0].is_anomalous), key=lambda r: r[3]
    ):
        distance = edge_distance(mask) if mask is not None and mask.any() else float("nan")
        where = "no mask" if np.isnan(distance) else "edge" if distance < EDGE_SHARE else "inside"
        missed = score <= threshold
        counts[(sample.defect_class, where, "missed" if missed else "caught")] += 1
        if missed:
            area = 0 if mask is None else int(mask.sum())
            print(
                f"  {score:6.3f}  {sample.defect_class:9s} {sample.path.name:24s} "
                f"{shape[0]}x{shape[1]}  mask {area} px ({100 * area / (shape[0] * shape[1]):.2f}"
                f"%), {100 * distance:.0f}% from the edge"
            )
    print("per type and place: caught / missed")
    for kind in sorted({key[0] for key in counts}):
        for where in ("edge", "inside", "no mask"):
            caught, missed = counts[(kind, where, "caught")], counts[(kind, where, "missed")]
            if caught or missed:
                print(f"  {kind:9s} {where:6s} {caught:4d} / {missed:d}")


if __name__ == "__main__":
    main()
