"""Two backbones' patch features concatenated into one detector (feature-level fusion, issue 12).

``bench/ensemble.py`` averages the calibrated scores of whole detectors on different
backbones. Here the two trunks instead feed one detector: each trunk's default layers are
interleaved finest first (Lite0 blocks 4 / 10 / 14 and Lite1 blocks 6 / 14 / 19: strides 8,
8, 16, 16, 32, 32) and concatenated into one 688-dimensional patch feature, so one set of
SimpleNet heads, one memory bank and one global Gaussian see both. The composite backbone
is registered for the run only (the product has no such backbone); the fit is the product's
``fit_detector`` with defaults, the scoring ``AnomalyDetector.score``, and the lines are
``bench/variants.py``'s.

    python bench/fusion.py [--members efficientnet_lite0,efficientnet_lite1] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from ensemble import report_checks
from variants import DEFAULT_DATA

import model.backbones as backbones_module
import model.detector as detector_module
import model.features as features_module
from model.data import list_images, read_images
from model.trainer import FitConfig, fit_detector


class CompositeBackbone(backbones_module.FeatureBackbone):
    """Runs every member trunk on the same input; returns their layers interleaved."""

    def __init__(self, members: list[str], spec: backbones_module.BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.members = torch.nn.ModuleList(backbones_module.build_backbone(m) for m in members)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One map per member layer, level by level (all members' finest first)."""
        outputs = [member(x) for member in self.members]
        return [maps[level] for level in range(len(outputs[0])) for maps in outputs]


def register(members: list[str]) -> backbones_module.BackboneSpec:
    """Registers the composite as a backbone for this process; returns its spec."""
    families = [backbones_module.BACKBONES[member] for member in members]
    levels = len(families[0].default_layers)
    layers = {
        f"{family.name}.{family.default_layers[level]}": family.layers[family.default_layers[level]]
        for level in range(levels)
        for family in families
    }
    name = "+".join(members)
    family = backbones_module.BackboneFamily(
        name=name,
        layers=layers,
        default_layers=tuple(layers),
        mean=families[0].mean,
        std=families[0].std,
    )
    backbones_module.BACKBONES[name] = family
    backbones_module.BACKBONE_SPECS[name] = family.spec()
    detector_module.BACKBONE_SPECS[name] = family.spec()
    features_module.DEFAULT_COMMON_DIM[name] = None
    return family.spec()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--members", default="efficientnet_lite0,efficientnet_lite1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    members = args.members.split(",")
    spec = register(members)
    if len({backbones_module.BACKBONES[m].mean for m in members}) != 1:
        parser.error("the members must share their input normalisation")
    images = read_images(list_images(args.data / "train" / "good"))
    started = time.perf_counter()
    detector = fit_detector(
        images,
        config=FitConfig(backbone=spec.name, seed=args.seed),
        product_line=args.data.name,
        backbone=CompositeBackbone(members, spec).freeze(),
    )
    print(f"fit time  {time.perf_counter() - started:.1f} s", flush=True)
    report_checks(f"fusion {spec.name} s{args.seed}", detector, args.data)


if __name__ == "__main__":
    main()
