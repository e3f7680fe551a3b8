"""One detector fitted and scored at two input scales (issue 12, stops 27 and 28).

Stop 26 measured pairs of separately fitted detectors (256 px + 192 px) that kept the
development figures and lifted the synthetic pixel AUROC; a pair needs two artifacts' worth
of heads, banks and calibrations. This measures the one-detector form of the same idea:
the product's ``fit_detector`` (defaults, ``--seed``) with three patches applied for the run
only:

- the feature cache runs the backbone on every standardised training batch and on the same
  batch resized (bilinear, antialiased) to ``--small`` px, and the heads and the memory
  bank's coreset see the patches of both scales (the global Gaussian keeps the full scale);
- the detector's score map is the mean of the full-scale map and the small-scale map
  resized (bilinear) to the full grid, SimpleNet and memory term alike;
- the held-out calibration scales the memory term on the same two-scale mean.

It then scores the development split and the synthetic defects with
``AnomalyDetector.score`` and prints ``bench/variants.py``'s line per check.

    python bench/multiscale.py [--small 192] [--seed 0]

Measured on one 2-core CPU machine, one run after another (stop 28): ``python
bench/multiscale.py --seed 0`` and ``--seed 1`` (fits 147 s and 158 s), then the default
detectors of the same seeds, ``python bench/ensemble.py efficientnet_lite0:0
efficientnet_lite0:1`` (fits 202 s and 206 s)::

    multiscale-192 s0 dev: image AUROC 0.974  pixel AUROC 0.964  AUPRO 0.737  recall at
      0.1/1/5% false alarms 0.495 / 0.750 / 0.835  | blowhole 0.967/0.72  break 0.983/0.79
    multiscale-192 s1 dev: image AUROC 0.979  pixel AUROC 0.964  AUPRO 0.728  recall at
      0.1/1/5% false alarms 0.505 / 0.700 / 0.900  | blowhole 0.972/0.70  break 0.989/0.71
    efficientnet_lite0:0 dev: image AUROC 0.974  pixel AUROC 0.966  AUPRO 0.763  recall at
      0.1/1/5% false alarms 0.520 / 0.765 / 0.820  | blowhole 0.969/0.77  break 0.980/0.75
    efficientnet_lite0:1 dev: image AUROC 0.980  pixel AUROC 0.968  AUPRO 0.782  recall at
      0.1/1/5% false alarms 0.490 / 0.700 / 0.910  | blowhole 0.975/0.70  break 0.988/0.69
    multiscale-192 s0 syn: image AUROC 0.967  pixel AUROC 0.881  AUPRO 0.816  recall at
      0.1/1/5% false alarms 0.650 / 0.860 / 0.875  | blotch 0.909/0.60  crack 0.994/0.98
      fray 0.999/1.00  scratch 0.965/0.86
    multiscale-192 s1 syn: image AUROC 0.973  pixel AUROC 0.884  AUPRO 0.822  recall at
      0.1/1/5% false alarms 0.640 / 0.840 / 0.905  | blotch 0.928/0.54  crack 0.995/0.96
      fray 0.999/0.98  scratch 0.968/0.88
    efficientnet_lite0:0 syn: image AUROC 0.964  pixel AUROC 0.867  AUPRO 0.820  recall at
      0.1/1/5% false alarms 0.640 / 0.840 / 0.870  | blotch 0.896/0.50  crack 0.995/0.98
      fray 0.999/1.00  scratch 0.967/0.88
    efficientnet_lite0:1 syn: image AUROC 0.969  pixel AUROC 0.862  AUPRO 0.822  recall at
      0.1/1/5% false alarms 0.620 / 0.805 / 0.895  | blotch 0.910/0.40  crack 0.997/0.96
      fray 0.999/1.00  scratch 0.969/0.86

Both seeds make the same trade: synthetic pixel AUROC +.014 / +.022 and recall at 1% false
alarms +.020 / +.035, for development pixel AUROC -.002 / -.004 and AUPRO -.026 / -.054,
development recall at 1% -.015 / .000, at 1.56x the backbone's input pixels per image
(256² + 192² over 256², counted, not timed). Neither development bar of issue 12 moves, so
it is not adopted.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from ensemble import report_checks
from variants import DEFAULT_DATA

import model.trainer as trainer_module
from model.data import list_images, read_images
from model.detector import AnomalyDetector, images_to_tensor
from model.global_gaussian import global_pool
from model.trainer import FitConfig, FitProgress, fit_detector


def shrunk(batch: torch.Tensor, size: int) -> torch.Tensor:
    """A normalised batch resized to ``size`` px (bilinear, antialiased)."""
    return F.interpolate(
        batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def patch(small: int) -> None:
    """Makes the trainer and the detector work at the full and the small scale."""

    @torch.inference_mode()
    def extract(backbone, aggregator, images, config, progress=None):
        spec = backbone.spec
        standardiser = trainer_module.IntensityStandardiser(spec.mean, spec.std)
        chunks, pooled = [], []
        for start in range(0, len(images), config.batch_size):
            chunk = images[start : start + config.batch_size]
            batch = images_to_tensor(chunk, config.image_size, spec.mean, spec.std)
            if config.input_standardisation:
                batch = standardiser(batch)
            layer_maps = backbone(batch)
            full = aggregator(layer_maps).flatten(2).transpose(1, 2)
            little = aggregator(backbone(shrunk(batch, small))).flatten(2).transpose(1, 2)
            chunks.append(torch.cat([full, little], dim=1).float())
            pooled.append(global_pool(layer_maps))
            if progress is not None:
                progress(start + len(chunk))
        return torch.cat(chunks), torch.cat(pooled)

    def scale_maps(self, batch, *, memory=None):
        """Full-scale backbone maps and the two scales' mean score and memory maps."""
        if self.standardiser is not None:
            batch = self.standardiser(batch)
        full, little = self.backbone(batch), self.backbone(shrunk(batch, small))

        def mean(term):
            near, far = term(full), term(little)
            resized = F.interpolate(far[:, None], size=near.shape[-2:], mode="bilinear")[:, 0]
            return (near + resized) / 2

        def distances(maps):
            return memory(self.aggregator([m.float() for m in maps]))

        return full, mean(self.scorer), (None if memory is None else mean(distances))

    def backbone_and_score_maps(self, batch, *, cuda_dtype=None):
        layer_maps, maps, memory = scale_maps(self, batch, memory=self.patch_memory)
        return layer_maps, maps if memory is None else maps + memory

    @torch.inference_mode()
    def holdout_parts(detector, memory, gaussian, images, batch_size, progress):
        maps, memory_maps, distances = [], [], []
        distance = None if memory is None else memory.distances
        for start in range(0, len(images), batch_size):
            batch = detector.preprocess(images[start : start + batch_size])
            layer_maps, score_maps, memory_map = scale_maps(detector, batch, memory=distance)
            maps.append(score_maps)
            if memory_map is not None:
                memory_maps.append(memory_map)
            if gaussian is not None:
                distances.append(gaussian.distances(global_pool(layer_maps)))
            if progress is not None:
                progress(FitProgress("calibration", min(start + batch_size, len(images)), 0))

        def joined(parts):
            return torch.cat(parts).numpy().astype(np.float64) if parts else None

        return joined(maps), joined(memory_maps), joined(distances)

    trainer_module.extract_patch_features = extract
    trainer_module._holdout_parts = holdout_parts
    AnomalyDetector.backbone_and_score_maps = backbone_and_score_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--small", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    patch(args.small)
    images = read_images(list_images(args.data / "train" / "good"))
    started = time.perf_counter()
    detector = fit_detector(images, config=FitConfig(seed=args.seed), product_line=args.data.name)
    print(f"fit time  {time.perf_counter() - started:.1f} s", flush=True)
    report_checks(f"multiscale-{args.small} s{args.seed}", detector, args.data)


if __name__ == "__main__":
    main()
