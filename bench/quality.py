"""Fits on <data>/train/good with the default settings and evaluates on <data>/test.

Prints the measured feature scale, fit time, image AUROC, pixel AUROC, AUPRO (30% FPR) and
F1 at the calibrated threshold. Nothing here looks at test labels before the model is final:
the fit uses good training images only, a fixed epoch count, and a threshold from held-out
good images.

    python bench/quality.py [--data ../shared/data/mtd] [--overlays runs/quality]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from model.data import list_images, list_test_samples, read_images
from model.evaluation import evaluate
from model.trainer import FitConfig, fit_detector

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--overlays", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override (default: FitConfig)")
    parser.add_argument("--heads", type=int, default=None, help="override (default: FitConfig)")
    parser.add_argument("--hidden-dim", type=int, default=None, help="override")
    parser.add_argument("--holdout-fraction", type=float, default=None, help="override")
    parser.add_argument("--seed", type=int, default=0, help="holdout split and head seeds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = ("epochs", "heads", "hidden_dim", "holdout_fraction")
    overrides = {name: getattr(args, name) for name in names}
    config = FitConfig(seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})
    images = read_images(list_images(args.data / "train" / "good"))
    samples = list_test_samples(args.data)
    print(f"data {args.data}: {len(images)} good training images, {len(samples)} test images")
    print(f"torch threads {torch.get_num_threads()}, config {config.resolved()}")
    started = time.perf_counter()
    detector = fit_detector(images, config=config, product_line=args.data.name)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report = evaluate(detector, samples, overlay_dir=args.overlays, overlay_count=16)
    meta = detector.metadata
    print(f"measured feature scale (mean per-dim std of patch features): {meta.feature_scale:.3f}")
    print(f"noise sigma {meta.noise_sigma} ({meta.noise_sigma / meta.feature_scale:.3f} x scale)")
    print(f"fit time        {fit_seconds:.1f} s  (bar <= 600 s)")
    print(f"eval time       {time.perf_counter() - started:.1f} s")
    print(report.table())
    verdict = report.image_auroc >= 0.92 and report.pixel_auroc >= 0.96 and fit_seconds <= 600
    bar = "image AUROC >= 0.92, pixel AUROC >= 0.96, fit <= 600 s"
    print(f"bar ({bar}): {'PASS' if verdict else 'FAIL'}")


if __name__ == "__main__":
    main()
