"""Issue 12: how the patch features treat the image border, swapped under ``bench/quality.py``.

Of the development split's defects, 84 of 85 breaks and 31 of 115 blowholes lie within 6% of
the tile's edge (``bench/misses.py``), and 26 of the 34 blowholes stop 24's default missed at
1% false alarms are a few pixels at the border. SimpleNet's code counts the zeros outside the
map in the 3x3 neighbourhood mean: on Lite0's 8 x 8 stride-32 map at 256 px, 28 of 64 cells
are border cells whose features are shrunk by 2/3 (corners 4/9), and the backbone's own
convolutions zero-pad too. The product's ``FitConfig.in_map_layers`` (``fit
--in-map-layers``) sets how many of the finest layers average the in-map cells only; since
stop 33 its default is 1 (the stride-8 layer).

    zeros         --in-map-layers 0: zeros counted on every layer (stop 32's default)
    exclude       --in-map-layers 3: the in-map cells only, every layer
    exclude-fine  --in-map-layers 2: the stride-8 and stride-16 layers, zeros on stride 32
    exclude-8     --in-map-layers 1: the stride-8 layer only (the default since stop 33)
    reflect32     the default, with the input reflect-padded by 32 px before the backbone and
                  every backbone map cropped back to the unpadded image's grid (1.56x the
                  backbone's pixels; experiment-only patch)
    edge-weight   the default, but the SimpleNet heads train on the patches within 2 cells of
                  the edge three times per epoch (the others once), to tighten the
                  discriminator's boundary where the patches vary most (experiment-only patch)

Each runs ``bench/quality.py``'s three checks unchanged (same arguments).

With ``--positions`` it fits (or loads from ``--runs-dir``) the full default under the
variant instead, and prints the checks' lines (``bench/variants.py``'s format) for the map as
is and normalised per position: each ring of cells (distance to the nearest edge), or each
class of cells alike under the map's symmetries (the 4 corners, ...), minus the class's
held-out median over its 99th percentile minus the median, on the fit's own held-out good
images (label-free); the image score is the normalised map's max, put back on the raw map's
held-out spread (``matching_scale``), plus the global Gaussian term.

    python bench/border.py exclude [bench/quality.py arguments]
    python bench/border.py {zeros,exclude} --positions [--runs-dir runs/border] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import quality
import torch
import torch.nn.functional as F  # noqa: N812
from bank_variants import class_normaliser, position_classes
from ensemble import load_or_fit
from variants import DEFAULT_DATA, check_sets, report, resized_masks

import model.trainer as trainer_module
from model.backbones import EfficientNetLiteTrunk
from model.calibration import matching_scale
from model.data import list_images, read_images
from model.detector import AnomalyDetector
from model.trainer import FitConfig, split_holdout

REFLECT_PAD = 32  # a multiple of the coarsest stride, so every map crops by whole cells
EDGE_CELLS, EDGE_REPEATS = 2, 3
VARIANTS = ("zeros", "exclude", "exclude-fine", "exclude-8", "reflect32", "edge-weight")
# FitConfig.in_map_layers of each variant: how many of the finest layers average the in-map
# cells only at the border (Lite0's three layers; the others count the zeros outside the map)
IN_MAP_LAYERS = {"zeros": 0, "exclude": 3, "exclude-fine": 2, "exclude-8": 1}


def patch_reflect() -> None:
    """Reflect-pads the backbone's input and crops its maps back to the unpadded grid."""
    original = EfficientNetLiteTrunk.forward

    def forward(self: EfficientNetLiteTrunk, batch: torch.Tensor) -> list[torch.Tensor]:
        padded = F.pad(batch, (REFLECT_PAD,) * 4, mode="reflect")
        maps = original(self, padded)
        cropped = []
        for feature_map in maps:
            stride = padded.shape[-1] // feature_map.shape[-1]
            cells = REFLECT_PAD // stride
            cropped.append(feature_map[..., cells:-cells, cells:-cells])
        return cropped

    EfficientNetLiteTrunk.forward = forward


def patch_edge_weight() -> None:
    """The heads' training patches: every patch once, the border's ``EDGE_REPEATS`` times."""
    original = trainer_module.train_heads

    def train_heads(features: torch.Tensor, *args, **kwargs):
        _, count, dims = features.shape
        side = round(count**0.5)
        if side * side != count:
            raise SystemExit("edge-weight needs one input scale: add --second-scale 0")
        rows, cols = np.divmod(np.arange(count), side)
        near = np.minimum(np.minimum(rows, side - 1 - rows), np.minimum(cols, side - 1 - cols))
        border = torch.from_numpy(np.flatnonzero(near < EDGE_CELLS))
        extra = features[:, border].reshape(1, -1, dims).repeat(1, EDGE_REPEATS - 1, 1)
        weighted = torch.cat([features.reshape(1, -1, dims), extra], dim=1)
        return original(weighted, *args, **kwargs)

    trainer_module.train_heads = train_heads


@torch.inference_mode()
def map_parts(detector: AnomalyDetector, images: list[np.ndarray]) -> tuple:
    """Raw score maps ``[N, h, w]`` and global Gaussian terms ``[N]``, float64."""
    maps, terms = [], []
    for start in range(0, len(images), 16):
        layer_maps, batch_maps = detector.backbone_and_score_maps(
            detector.preprocess(images[start : start + 16])
        )
        maps.append(batch_maps.numpy())
        assert detector.global_gaussian is not None
        terms.append(detector.global_gaussian(layer_maps).numpy())
    return np.concatenate(maps).astype(np.float64), np.concatenate(terms).astype(np.float64)


def print_positions(variant: str, runs: Path, data: Path, seed: int) -> None:
    """The full default under ``variant``: checks' lines, map as is and per-position scaled."""
    detector = load_or_fit(  # held-out maps below: the bank must not hold those images
        f"{FitConfig().backbone}:{seed}",
        runs / variant,
        data,
        all_images_in_terms=False,
        in_map_layers=IN_MAP_LAYERS.get(variant),
    )
    images = read_images(list_images(data / "train" / "good"))
    config = FitConfig()
    _, holdout = split_holdout(len(images), config.holdout_fraction, config.min_holdout, seed)
    held, _ = map_parts(detector, [images[i] for i in holdout])
    held_max = held.reshape(len(held), -1).max(axis=1)
    sets = check_sets(data)
    scored = {key: map_parts(detector, images) for key, (images, _, _) in sets.items()}
    options = {"as is": None, **position_classes(*held.shape[-2:])}
    for name, classes in options.items():
        scale = (lambda maps: maps) if classes is None else class_normaliser(held, classes)
        center, weight = matching_scale(held_max, scale(held).reshape(len(held), -1).max(axis=1))
        for key, (_, masks, kinds) in sets.items():
            maps, terms = scored[key]
            scaled = scale(maps)
            scores = weight * (scaled.reshape(len(maps), -1).max(axis=1) - center) + terms
            truth = resized_masks(masks, detector.metadata.image_size)
            report(
                f"{variant} {name} {key}", scores, scaled.astype(np.float32), truth, np.array(kinds)
            )


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: python bench/border.py {{{','.join(VARIANTS)}}} [...]")
    variant = sys.argv.pop(1)
    if variant == "reflect32":
        patch_reflect()
    elif variant == "edge-weight":
        patch_edge_weight()
    if "--positions" in sys.argv:
        parser = argparse.ArgumentParser(description="per-position normalisation")
        parser.add_argument("--positions", action="store_true")
        parser.add_argument("--runs-dir", type=Path, default=Path("runs/border"))
        parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
        parser.add_argument("--seed", type=int, default=0, help="fit seed (holdout and heads)")
        args = parser.parse_args()
        print_positions(variant, args.runs_dir, args.data, args.seed)
        return
    print(f"border variant: {variant}")
    if variant in IN_MAP_LAYERS:
        sys.argv += ["--in-map-layers", str(IN_MAP_LAYERS[variant])]
    quality.main()


if __name__ == "__main__":
    main()
