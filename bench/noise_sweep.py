"""Sweep of training settings (noise sigma, epochs, image size) on a development split.

Caches the backbone features once, then for every setting trains a head, calibrates it on
the held-out good images and evaluates on <data>/test. This is how the Lite0 default noise
sigma was chosen on ../shared/data/mtd; defaults chosen this way must also hold on data
not used for the choice.

    python bench/noise_sweep.py noise_sigma=0.4,epochs=3 noise_sigma=0.6,epochs=3 [--size 256]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from model.backbones import build_backbone
from model.data import list_images, list_test_samples, read_images
from model.detector import AnomalyDetector
from model.evaluation import evaluate
from model.features import PatchFeatureAggregator
from model.metadata import Calibration, DetectorMetadata
from model.trainer import FitConfig, calibrate, extract_patch_features, split_holdout, train_heads

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtd"
INT_FIELDS = {"epochs", "patches_per_step"}


def _parse(setting: str) -> dict[str, float | int]:
    values: dict[str, float | int] = {}
    for item in setting.split(","):
        name, value = item.split("=")
        values[name] = int(value) if name in INT_FIELDS else float(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", help="comma-separated FitConfig overrides")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    base = FitConfig(image_size=args.size).resolved()
    images = read_images(list_images(args.data / "train" / "good"))
    samples = list_test_samples(args.data)
    backbone = build_backbone(base.backbone)
    train_index, holdout_index = split_holdout(
        len(images), base.holdout_fraction, base.min_holdout, base.seed
    )
    assert base.embed_dim is not None
    aggregator = PatchFeatureAggregator(
        backbone.spec, common_dim=base.common_dim, embed_dim=base.embed_dim
    )
    features = extract_patch_features(backbone, aggregator, [images[i] for i in train_index], base)
    holdout = [images[i] for i in holdout_index]
    print(f"{len(train_index)} train / {len(holdout)} held out, {args.size}px")
    for setting in args.settings:
        config = replace(base, **_parse(setting))
        losses: list[float] = []
        started = time.perf_counter()
        head = train_heads(
            features, config, lambda epoch, epochs, loss, seen=losses: seen.append(loss)
        )
        seconds = time.perf_counter() - started
        metadata = DetectorMetadata(
            version="sweep",
            product_line="sweep",
            backbone=base.backbone,
            layers=backbone.spec.layers,
            image_size=args.size,
            common_dim=base.common_dim,
            embed_dim=base.embed_dim,
            hidden_dim=config.hidden_dim,
            heads=config.heads,
            margin=config.margin,
            noise_sigma=float(config.noise_sigma or 0),
            feature_scale=0.0,
            epochs=config.epochs,
            calibration=Calibration(0.0, 1.0, base.threshold_quantile),
            calibration_scores=(),
            train_image_count=len(train_index),
            holdout_image_count=len(holdout),
            train_fingerprint="",
            created_at="",
            code_version="sweep",
        )
        detector = AnomalyDetector(backbone=backbone, head=head, metadata=metadata)
        calibration = calibrate(detector.predict(holdout).scores, base.threshold_quantile)
        detector.metadata = replace(metadata, calibration=calibration)
        report = evaluate(detector, samples)
        print(
            f"{setting:<32} train {seconds:5.0f}s  image AUROC {report.image_auroc:.4f}  "
            f"pixel AUROC {report.pixel_auroc:.4f}  AUPRO {report.aupro:.4f}  "
            f"F1 {report.f1:.3f}  losses {[round(v, 3) for v in losses]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
