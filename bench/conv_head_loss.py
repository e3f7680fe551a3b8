"""Does a head learn the synthetic noise? Training loss of head forms (issue 12, stop 30).

``bench/conv_head.py``'s 3x3-convolution heads kept a loss of 0.97-0.98 (1.0 at the start)
and failed. This script trains one head per form for three epochs on 100 MTD training
images' cached feature maps (both scales, two images per step, the product's noise sigma,
optimisers and truncated L1 loss) and prints the mean loss per epoch, to tell whether the
head, the mask or the amount of training is what does not learn:

- ``perlin 3x3``: ``bench/conv_head.py``'s form (noise inside Perlin masks, about 6 % of
  the positions);
- ``perlin 3x3 lr x10``: the same at ten times the discriminator's learning rate;
- ``iid-half 3x3``: noise on half the positions, each drawn independently;
- ``iid-half 1x1``: the same with a per-patch (1x1) hidden layer, the product's head form;
- ``full-noise 3x3``: the clean map all normal and the same map with noise everywhere all
  anomalous (as the product pairs clean and noisy patches);
- ``perlin 3x3 ring``: ``perlin 3x3`` with the clean positions within one cell of a mask
  left out of the loss (their 3x3 window sees the noise).

    python bench/conv_head_loss.py [--images 100] [--only "perlin 3x3 ring" ...]

Measured at stop 30 (100 images, 50 steps per epoch, noise sigma 0.510; loss per epoch):

    perlin 3x3           0.9890 / 0.9714 / 0.9921
    perlin 3x3 lr x10    0.9967 / 1.0063 / 0.9949
    iid-half 3x3         1.0003 / 0.9997 / 1.0011
    iid-half 1x1         0.9830 / 0.9615 / 0.9402
    full-noise 3x3       0.9984 / 0.9851 / 0.9586
    perlin 3x3 ring      0.9853 / 0.9641 / 0.9884

(the ring form first ran with ``--only``; after the heads' training moved into
``conv_head.train_conv_head``, one run of all six reprinted every line to the last digit.)

The 3x3 head learns clean-against-noised maps and the 1x1 head learns independent noise,
but the 3x3 head learns neither noise on half the positions nor noise inside the Perlin
masks (at either learning rate). I first read it as contradicting labels (a clean position next to a
noised one sees the noise through its 3x3 window and is labelled normal); leaving those
positions out of the loss (``perlin 3x3 ring``) did not make it learn, so that reading is
not supported and the cause is open. Three epochs of 50 steps is a short run: the product's
heads take about 1000 steps each.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from conv_head import feature_maps, train_conv_head
from variants import DEFAULT_DATA

from model.backbones import build_backbone
from model.data import list_images, read_images
from model.features import PatchFeatureAggregator
from model.local_anomalies import perlin_mask
from model.trainer import FitConfig, _grid, extract_patch_features

Mask = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def iid_half(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Half the positions, each independently."""
    return rng.random(shape) < 0.5


def train(
    maps: list[torch.Tensor],
    config: FitConfig,
    sigma: float,
    mask: Mask | None,
    *,
    kernel: int = 3,
    lr_scale: float = 1.0,
    ignore_ring: bool = False,
) -> list[float]:
    """Mean loss per epoch of one head, seed 0 (``conv_head.train_conv_head``)."""
    config = replace(config, noise_sigma=sigma)
    options = dict(mask=mask, kernel=kernel, lr_scale=lr_scale, ignore_ring=ignore_ring)
    return train_conv_head(maps, config, 0, **options)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--only", nargs="*", default=None, help="form names to run")
    args = parser.parse_args()
    config = FitConfig().resolved()
    backbone = build_backbone(config.backbone, layers=config.layers)
    aggregator = PatchFeatureAggregator(
        backbone.spec, common_dim=config.common_dim, embed_dim=config.embed_dim
    )
    images = read_images(list_images(args.data / "train" / "good"))[: args.images]
    with torch.inference_mode():
        features, _ = extract_patch_features(
            backbone, aggregator, images, config, second_size=config.second_image_size
        )
    features = features.clone()  # out of inference mode, for autograd
    sigma = config.noise_ratio * float(features.reshape(-1, features.shape[-1]).std(0).mean())
    height, width = _grid(backbone, config.image_size)
    maps = feature_maps(features, height * width)
    forms: dict[str, tuple[Mask | None, int, float, bool]] = {
        "perlin 3x3": (perlin_mask, 3, 1.0, False),
        "perlin 3x3 lr x10": (perlin_mask, 3, 10.0, False),
        "iid-half 3x3": (iid_half, 3, 1.0, False),
        "iid-half 1x1": (iid_half, 1, 1.0, False),
        "full-noise 3x3": (None, 3, 1.0, False),
        "perlin 3x3 ring": (perlin_mask, 3, 1.0, True),
    }
    print(f"{len(images)} images, {len(images) // 2} steps per epoch, noise sigma {sigma:.3f}")
    for name, (mask, kernel, lr_scale, ring) in forms.items():
        if args.only and name not in args.only:
            continue
        losses = train(
            maps, config, sigma, mask, kernel=kernel, lr_scale=lr_scale, ignore_ring=ring
        )
        print(f"{name:<20} loss per epoch " + " / ".join(f"{v:.4f}" for v in losses), flush=True)


if __name__ == "__main__":
    main()
