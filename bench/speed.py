"""Throughput of the full detector (backbone + folded head) vs the bare backbone trunk.

Measured side by side in one run on the CPU, at 256 px, batch 1 and 8, for the default
EfficientNet-Lite0 (ImageNet weights) and WideResNet50-2 (random weights: speed only).
"full" is what a worker runs per batch on an already decoded batch: backbone, folded head,
max, upsampling and the sigma-4 Gaussian blur of the heatmap.

    python bench/speed.py [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.backbones import build_backbone
from model.detector import AnomalyDetector
from model.features import DEFAULT_COMMON_DIM, default_embed_dim
from model.metadata import Calibration, DetectorMetadata
from model.network import HeadEnsemble
from model.trainer import FitConfig

SIZE = 256
FIT_DEFAULTS = FitConfig()  # the default ensemble size and margin


def _detector(backbone_name: str) -> AnomalyDetector:
    backbone = build_backbone(backbone_name, pretrained=backbone_name == "efficientnet_lite0")
    embed = default_embed_dim(
        backbone_name, backbone.spec.channels, DEFAULT_COMMON_DIM[backbone_name]
    )
    metadata = DetectorMetadata(
        version="bench",
        product_line="bench",
        backbone=backbone_name,
        layers=backbone.spec.layers,
        image_size=SIZE,
        common_dim=DEFAULT_COMMON_DIM[backbone_name],
        embed_dim=embed,
        hidden_dim=FIT_DEFAULTS.hidden_dim,
        heads=FIT_DEFAULTS.heads,
        margin=FIT_DEFAULTS.margin,
        noise_sigma=0.015,
        feature_scale=1.0,
        epochs=1,
        calibration=Calibration(0.0, 1.0, 0.01, 0.01),
        calibration_scores=(),
        train_image_count=0,
        holdout_image_count=0,
        train_fingerprint="",
        created_at="",
        code_version="bench",
    )
    head = HeadEnsemble.empty(
        FIT_DEFAULTS.heads, embed, FIT_DEFAULTS.hidden_dim, -FIT_DEFAULTS.margin
    ).eval()
    return AnomalyDetector(backbone=backbone, head=head, metadata=metadata)


def _full(detector: AnomalyDetector, batch: torch.Tensor) -> torch.Tensor:
    maps = detector.score_maps(batch)
    heatmaps = detector.heatmaps(maps)
    return maps.flatten(1).amax(1) + heatmaps[:, 0, 0]


def _paired_rates(trunk_fn, full_fn, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Images/s of trunk and full from the median of back-to-back timed pairs.

    Each repeat times one trunk batch and then one full batch, so drift in machine load
    (this machine's throughput moves by a third between minutes) hits both alike, and the
    median ignores a stray slow batch.
    """
    trunk_times, full_times = [], []
    with torch.inference_mode():
        for _ in range(3):
            trunk_fn(batch)
            full_fn(batch)
        for _ in range(repeats):
            started = time.perf_counter()
            trunk_fn(batch)
            middle = time.perf_counter()
            full_fn(batch)
            trunk_times.append(middle - started)
            full_times.append(time.perf_counter() - middle)
    size = batch.shape[0]
    return size / statistics.median(trunk_times), size / statistics.median(full_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, {SIZE}x{SIZE} px, images/s (higher is better)")
    print(f"{'backbone':<20} {'batch':>5} {'trunk':>9} {'full':>9} {'full/trunk':>10}")
    for name in ("efficientnet_lite0", "wide_resnet50_2"):
        detector = _detector(name)
        for batch_size in (1, 8):
            batch = torch.randn(batch_size, 3, SIZE, SIZE)
            repeats = (
                max(args.repeats // batch_size, 3) if name == "wide_resnet50_2" else args.repeats
            )
            trunk, full = _paired_rates(
                detector.backbone, lambda b, d=detector: _full(d, b), batch, repeats
            )
            print(f"{name:<20} {batch_size:>5} {trunk:>9.1f} {full:>9.1f} {full / trunk:>10.3f}")


if __name__ == "__main__":
    main()
