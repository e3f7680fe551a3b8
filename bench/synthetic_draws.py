"""Issue 12: the border's trade on more draws of the synthetic unseen-type check.

``bench/quality.py``'s synthetic check draws 50 defects per kind into the unseen good tiles
with one seed (1234). This fits (or loads from ``--runs-dir``) the default detector and the
same fit with ``in_map_layers`` 0 (SimpleNet's pooling of the border), both at ``--seed``,
and prints the synthetic check's line for each on several draws, so that a difference
between the two is not one draw's luck. Label-free fits; the draws never reach a fit.

    python bench/synthetic_draws.py [--seed 0] [--draws 1234 2001 2002 2003] [--runs-dir runs/draws]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from ensemble import load_or_fit
from variants import DEFAULT_DATA, SYNTHETIC_PER_KIND, SYNTHETIC_SEED, report_heat, resized_masks

from model.data import list_test_samples
from model.defect_synthesis import synthetic_defect_set
from model.detector import AnomalyDetector
from model.trainer import FitConfig


@torch.inference_mode()
def scored(detector: AnomalyDetector, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Image scores ``[N]`` and heatmaps ``[N, S, S]`` as the product computes them."""
    scores, heatmaps = [], []
    for start in range(0, len(images), 16):
        maps, batch_scores = detector.score(detector.preprocess(images[start : start + 16]))
        scores.append(batch_scores.numpy())
        heatmaps.append(detector.heatmaps(maps).numpy())
    return np.concatenate(scores), np.concatenate(heatmaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0, help="fit seed (holdout and heads)")
    parser.add_argument(
        "--draws", type=int, nargs="+", default=[SYNTHETIC_SEED, 2001, 2002, 2003],
        help="seeds of the synthetic draws (the first is bench/quality.py's)",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/draws"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run = f"{FitConfig().backbone}:{args.seed}"
    counts = sorted({FitConfig().in_map_layers, 0}, reverse=True)
    models = {
        f"in-map {count}": load_or_fit(
            run, args.runs_dir / f"in-map-{count}", args.data, in_map_layers=count
        )
        for count in counts
    }
    samples = list_test_samples(args.data)
    goods = [sample.load()[0] for sample in samples if not sample.is_anomalous]
    for draw in args.draws:
        drawn = synthetic_defect_set(goods, per_kind=SYNTHETIC_PER_KIND, seed=draw)
        images = goods + [defect.image for defect in drawn]
        kinds = np.array(["good"] * len(goods) + [defect.kind for defect in drawn])
        for name, detector in models.items():
            masks = resized_masks(
                [None] * len(goods) + [defect.mask for defect in drawn],
                detector.metadata.image_size,
            )
            scores, heatmaps = scored(detector, images)
            report_heat(f"draw {draw} {name}", scores, heatmaps, masks, kinds)


if __name__ == "__main__":
    main()
