"""Issue 12: variants of the patch memory bank, the image score and the heatmap blur.

Runs on a SimpleNet-alone run that ``bench/variants.py NAME`` fitted and saved (2 heads,
seed 0 in the note's table). For each variant it builds the memory bank as the product
does (greedy coreset of 4000 training patches, distance scaled on the held-out good
images, added to the SimpleNet map), optionally with the global Gaussian term on top
(held-out scaled, as the product), and prints the same two checks as ``bench/variants.py``.
Only the bank's feature space, the summed map's normalisation or the image-level Gaussian
changes between variants; the product has none of them.

Variants (``--only`` picks some):
    all            the product's bank: every layer, Euclidean (reference)
    b4b10, b4, b10b14   the bank on some of the layers only (stride 8+16, 8, 16+32)
    pos0.5, pos1, pos2  patch position (y, x in [0, 1]) appended, times 0.5 / 1 / 2 median
                   nearest-neighbour distance (a position-aware bank)
    flip           training patches of horizontally flipped images added to the candidates
    balanced       each layer's block divided by its mean patch norm (equal layer weight)
    whitened       features whitened by the training patches' Ledoit-Wolf covariance
    knn3           distance = mean of the 3 nearest bank patches (not the nearest one)
    tta            test-time flip: SimpleNet and bank maps averaged with those of the
                   mirrored image (twice the scoring cost)
    res320, res384, res384b9k   the bank on features of 320 / 384 px input (4000 / 9000
                   patches), SimpleNet and the Gaussian term at the model's own size; the
                   SimpleNet map is upsampled to the bank's finer grid before the sum
    rings          the summed map normalised per ring of patches (distance to the nearest
                   edge) by the held-out good maps' median and 99th percentile
    glevels        the global Gaussian on the pooled outputs of Lite0's six stage ends
                   (blocks 0, 2, 4, 7, 10, 14; 464 dimensions) instead of the three layers
    glevels-sum    one Gaussian per stage end, distances summed (as Rippel et al., ICPR 2020)
    pmax           the patch-wise max of the SimpleNet map and the scaled bank map, not the sum
and, on the reference ``all`` maps: image score as the max of the blurred heatmap (sigma
4 / 8), as the mean of the top 4 / 16 patches and as the max without the outer ring of
patches; the heatmap from the scaled bank map alone; pixel metrics at heatmap sigma 2-8.

    python bench/variants.py d2s0 --heads 2 && python bench/bank_variants.py d2s0
    python bench/variants.py nb335 --heads 2 --neighbourhood 3,3,5 \
        && python bench/bank_variants.py nb335 --neighbourhood 3,3,5 --only all
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from variants import (
    DEFAULT_DATA,
    check_sets,
    image_scores,
    patch_neighbourhood,
    report,
    resized_masks,
)

from model.artifact import load_artifact
from model.backbones import BACKBONE_SPECS
from model.calibration import matching_scale
from model.data import list_images, read_images
from model.detector import images_to_tensor, upsample_and_blur
from model.evaluation import aupro, auroc
from model.features import PatchFeatureAggregator
from model.global_gaussian import GlobalGaussian, global_pool, ledoit_wolf
from model.patch_memory import PatchMemory, greedy_coreset
from model.trainer import split_holdout

BANK_SIZE = 4000
LAYER_BLOCKS = ((0, 40), (40, 152), (152, 344))  # Lite0 blocks 4 / 10 / 14, concatenated
STAGE_ENDS = (0, 2, 4, 7, 10, 14)  # Lite0's last block of each stage the trunk computes
Parts = tuple[torch.Tensor, np.ndarray, torch.Tensor]  # patch features, SimpleNet maps, pooled
Transform = Callable[[torch.Tensor], torch.Tensor]  # [B, D, h, w] -> [B, D', h, w]


class Bench:
    """The cached features of one saved run: training, held-out and both checks."""

    def __init__(self, run: Path, data: Path, *, bank_pooling: Callable | None = None) -> None:
        self.detector = load_artifact(run)
        if self.detector.rescaler is not None:
            raise SystemExit(
                f"{run} scores two input scales; these variants are of one: fit the run with "
                "bench/variants.py --second-scale 0"
            )
        if bank_pooling is not None:  # the run's SimpleNet pools otherwise than the bank
            self.detector.aggregator.pooled_layers = bank_pooling
        # the product's pooled columns (its Gaussian's); the stage ends' pooled maps follow
        self.pooled_dims = sum(self.detector.backbone.spec.channels)
        self.stage_means: list[torch.Tensor] = []
        for index in STAGE_ENDS:  # pooled stage outputs, for the per-level Gaussians
            self.detector.backbone._blocks[index].register_forward_hook(
                lambda module, inputs, output: self.stage_means.append(
                    output.float().mean(dim=(2, 3))
                )
            )
        images = read_images(list_images(data / "train" / "good"))
        fit_index, holdout_index = split_holdout(len(images), 0.2, 2, 0)
        self.fit_images = [images[i] for i in fit_index]
        self.sets = check_sets(data)
        size = self.detector.metadata.image_size
        self.masks = {
            key: (resized_masks(masks, size), np.array(kinds))
            for key, (_, masks, kinds) in self.sets.items()
        }
        self.train = self.parts(self.fit_images)
        self.holdout_images = [images[i] for i in holdout_index]
        self.holdout = self.parts(self.holdout_images)
        self.checks = {key: self.parts(images) for key, (images, _, _) in self.sets.items()}
        self.gaussian, _ = GlobalGaussian.fit(self.train[2][:, : self.pooled_dims])
        self.level_dims = [int(m.shape[1]) for m in self.stage_means[-len(STAGE_ENDS) :]]

    @torch.inference_mode()
    def parts(self, images: list[np.ndarray], flip: bool = False) -> Parts:
        """Patch features (float16), SimpleNet maps and pooled maps of ``images``."""
        features, maps, pooled = [], [], []
        for start in range(0, len(images), 16):
            batch = self.detector.preprocess(images[start : start + 16])
            if flip:
                batch = batch.flip(-1)
            self.stage_means.clear()
            layer_maps, score_maps = self.detector.backbone_and_score_maps(batch)
            features.append(self.detector.aggregator([m.float() for m in layer_maps]).half())
            maps.append(score_maps)
            pooled.append(torch.cat([global_pool(layer_maps), *self.stage_means], dim=1))
        return torch.cat(features), torch.cat(maps).double().numpy(), torch.cat(pooled)

    @torch.inference_mode()
    def features_at(self, images: list[np.ndarray], size: int) -> torch.Tensor:
        """Patch features (float16) of ``images`` resized to ``size`` px (bank only)."""
        spec = BACKBONE_SPECS[self.detector.metadata.backbone]
        features = []
        for start in range(0, len(images), 16):
            batch = images_to_tensor(images[start : start + 16], size, spec.mean, spec.std)
            layer_maps = self.detector.backbone(batch)
            features.append(self.detector.aggregator([m.float() for m in layer_maps]).half())
        return torch.cat(features)

    def finer_bank(self, size: int, bank_size: int) -> dict[str, tuple]:
        """The bank on features of ``size`` px input; SimpleNet and the Gaussian stay at theirs."""
        candidates = self.patches(lambda f: f.float(), self.features_at(self.fit_images, size))
        distances = self.bank_distances(candidates, lambda f: f.float(), bank_size=bank_size)
        held = (self.holdout[1], distances(self.features_at(self.holdout_images, size)))
        checks = {
            key: (self.checks[key][1], distances(self.features_at(images, size)))
            for key, (images, _, _) in self.sets.items()
        }
        return self.combine(held, checks)

    def flip_averaged(self, candidates: torch.Tensor) -> dict[str, tuple]:
        """Test-time augmentation: SimpleNet and bank maps averaged with the mirrored image's."""
        distances = self.bank_distances(candidates, lambda f: f.float())

        def averaged(parts: Parts, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            features, maps, _ = self.parts(images, flip=True)
            return (
                0.5 * (parts[1] + maps[..., ::-1]),
                0.5 * (distances(parts[0]) + distances(features)[..., ::-1]),
            )

        held = averaged(self.holdout, self.holdout_images)
        checks = {key: averaged(self.checks[key], self.sets[key][0]) for key in self.checks}
        return self.combine(held, checks)

    def patches(self, transform: Transform, features: torch.Tensor | None = None) -> torch.Tensor:
        """Training patches ``[N, D']`` in a variant's feature space."""
        mapped = transform(self.train[0] if features is None else features)
        return mapped.permute(0, 2, 3, 1).reshape(-1, mapped.shape[1])

    def summed_maps(
        self,
        candidates: torch.Tensor,
        transform: Transform,
        *,
        neighbours: int = 1,
        rings: bool = False,
        gaussian: Callable[[torch.Tensor], np.ndarray] | None = None,
        fuse: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.add,
    ) -> dict[str, tuple]:
        """Per check: SimpleNet + scaled bank map, the Gaussian term and the scaled bank map."""
        distances = self.bank_distances(candidates, transform, neighbours=neighbours)
        held = (self.holdout[1], distances(self.holdout[0]))
        checks = {
            key: (maps, distances(features)) for key, (features, maps, _) in self.checks.items()
        }
        return self.combine(held, checks, rings=rings, gaussian=gaussian, fuse=fuse)

    def bank_distances(
        self,
        candidates: torch.Tensor,
        transform: Transform,
        *,
        neighbours: int = 1,
        bank_size: int = BANK_SIZE,
    ) -> Callable[[torch.Tensor], np.ndarray]:
        """Distance maps to a coreset bank of ``candidates`` (mean of the nearest few)."""
        memory = PatchMemory(
            candidates[greedy_coreset(candidates, bank_size, seed=0)], center=0.0, weight=1.0
        )

        def one(features: torch.Tensor) -> torch.Tensor:
            if neighbours == 1:
                return memory.distances(features)
            batch, dims, height, width = features.shape
            patches = features.flatten(2).transpose(1, 2).reshape(-1, dims)
            nearest = torch.cdist(patches, memory.bank).topk(neighbours, largest=False).values
            return nearest.mean(dim=1).reshape(batch, height, width)

        @torch.inference_mode()
        def distances(features: torch.Tensor) -> np.ndarray:
            chunks = range(0, len(features), 16)
            return (
                torch.cat([one(transform(features[s : s + 16])) for s in chunks]).double().numpy()
            )

        return distances

    def combine(
        self,
        held: tuple,
        checks: dict[str, tuple],
        *,
        rings: bool = False,
        gaussian: Callable[[torch.Tensor], np.ndarray] | None = None,
        fuse: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.add,
    ) -> dict[str, tuple]:
        """Sums SimpleNet and bank maps, both scaled on the held-out images, plus the Gaussian.

        Args:
            held: held-out (SimpleNet maps, bank distance maps).
            checks: per check, the same pair; a bank grid finer than SimpleNet's gets the
                SimpleNet map bilinearly upsampled to it.
            rings: normalise the summed map per ring of patches (distance to the nearest
                edge): minus the ring's held-out median, over its 99th percentile - median.
            gaussian: unscaled image-level distances of pooled features (default: the
                product's global Gaussian).
            fuse: how the SimpleNet map and the scaled bank map make one (default: sum).
        """
        gaussian = gaussian or self.mahalanobis
        center, weight = matching_scale(image_scores(held[0]), image_scores(held[1]))
        held_sum = fuse(on_grid(held[0], held[1]), weight * (held[1] - center))
        normalise = ring_normaliser(held_sum) if rings else (lambda maps: maps)
        held_sum = normalise(held_sum)
        g_center, g_weight = matching_scale(image_scores(held_sum), gaussian(self.holdout[2]))
        result = {}
        for key, (maps, distances) in checks.items():
            summed = normalise(fuse(on_grid(maps, distances), weight * (distances - center)))
            term = g_weight * (gaussian(self.checks[key][2]) - g_center)
            result[key] = (summed, term, weight * (distances - center))
        return result

    def mahalanobis(self, pooled: torch.Tensor) -> np.ndarray:
        """Unscaled global Gaussian distances (the product's term)."""
        return self.gaussian.distances(pooled[:, : self.pooled_dims]).double().numpy()

    def level_gaussian(self, per_level: bool) -> Callable[[torch.Tensor], np.ndarray]:
        """A Gaussian on the pooled stage outputs: one on all, or one per stage, summed."""
        bounds = np.cumsum([self.pooled_dims, *self.level_dims])
        slices = list(itertools.pairwise(int(b) for b in bounds))
        groups = slices if per_level else [(slices[0][0], slices[-1][1])]
        fitted = [GlobalGaussian.fit(self.train[2][:, a:b])[0] for a, b in groups]

        def distances(pooled: torch.Tensor) -> np.ndarray:
            total = sum(
                g.distances(pooled[:, a:b]) for g, (a, b) in zip(fitted, groups, strict=True)
            )
            return total.double().numpy()

        return distances

    def report_variant(self, label: str, make: Callable[[], dict]) -> dict:
        """Prints one variant's rows; returns per check summed map, Gaussian term, bank map."""
        started = time.perf_counter()
        result = make()
        for key, (summed, term, _) in result.items():
            scores = image_scores(summed)
            report(f"{label} {key} sum", scores, summed, *self.masks[key])
            report(f"{label} {key} sum+gauss", scores + term, summed, *self.masks[key])
        print(f"({label}: {time.perf_counter() - started:.0f} s)", flush=True)
        return result


def position_classes(height: int, width: int) -> dict[str, np.ndarray]:
    """Cell class maps: ``rings`` (distance to the nearest edge) and symmetric ``cells``."""
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    from_top, from_left = np.minimum(rows, height - 1 - rows), np.minimum(cols, width - 1 - cols)
    near, far = np.minimum(from_top, from_left), np.maximum(from_top, from_left)
    return {"rings": near, "cells": near * max(height, width) + far}


def class_normaliser(held: np.ndarray, classes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``(map - median) / (p99 - median)`` per class of cells, from held-out good maps."""
    median, top = np.zeros(classes.shape), np.ones(classes.shape)
    for value in np.unique(classes):
        low, high = np.quantile(held[:, classes == value], [0.5, 0.99])
        median[classes == value], top[classes == value] = low, high
    return lambda maps: (maps - median) / (top - median)


def ring_normaliser(held: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Per-ring normalisation of maps like ``held`` from the held-out good maps' quantiles."""
    return class_normaliser(held, position_classes(*held.shape[-2:])["rings"])


def on_grid(maps: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``maps`` bilinearly resized to ``like``'s grid (unchanged when they agree)."""
    if maps.shape[-2:] == like.shape[-2:]:
        return maps
    tensor = torch.from_numpy(np.ascontiguousarray(maps))[:, None]
    resized = F.interpolate(tensor, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


def blurred_max(maps: np.ndarray, sigma: float, size: int) -> np.ndarray:
    """Image score: the max of the heatmap at the model's input size."""
    heat = upsample_and_blur(torch.from_numpy(maps).float(), (size, size), sigma)
    return heat.flatten(1).amax(1).double().numpy()


def top_mean(maps: np.ndarray, count: int) -> np.ndarray:
    """Image score: the mean of the ``count`` highest patches."""
    return np.sort(maps.reshape(len(maps), -1), axis=1)[:, -count:].mean(axis=1)


def score_and_blur_rows(bench: Bench, reference: dict) -> None:
    """Other image scores and heatmap blurs on the reference bank's maps (no refit)."""
    size = bench.detector.metadata.image_size
    scores: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "blurred max sigma 4": lambda m: blurred_max(m, 4.0, size),
        "blurred max sigma 8": lambda m: blurred_max(m, 8.0, size),
        "top-4 mean": lambda m: top_mean(m, 4),
        "top-16 mean": lambda m: top_mean(m, 16),
        "max without the outer ring": lambda m: image_scores(m[:, 1:-1, 1:-1]),
    }
    for label, score in scores.items():
        for key, (summed, _, _) in reference.items():
            report(f"all, image score {label} {key}", score(summed), summed, *bench.masks[key])
    for key, (summed, term, bank_map) in reference.items():
        label = "all, heatmap from the bank alone (image score: sum + Gaussian)"
        report(f"{label} {key}", image_scores(summed) + term, bank_map, *bench.masks[key])
    for key, (summed, _, _) in reference.items():
        masks = bench.masks[key][0]
        for sigma in (2.0, 3.0, 4.0, 6.0, 8.0):
            heat = upsample_and_blur(torch.from_numpy(summed).float(), masks.shape[-2:], sigma)
            heat = heat.numpy()
            print(
                f"all {key} heatmap sigma {sigma}: pixel AUROC "
                f"{auroc(masks.ravel(), heat.ravel()):.4f}  AUPRO {aupro(masks, heat):.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a SimpleNet-alone run saved by bench/variants.py")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=Path, default=Path("runs/variants"))
    parser.add_argument("--only", default=None, help="comma-separated variants")
    parser.add_argument(
        "--neighbourhood",
        default=None,
        help="the run's SimpleNet neighbourhood per layer (bench/variants.py's, e.g. 3,3,5); "
        "the bank keeps the product's 3x3",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    product_pooling = PatchFeatureAggregator.pooled_layers  # the bank keeps it
    if args.neighbourhood:
        patch_neighbourhood(tuple(int(k) for k in args.neighbourhood.split(",")))
    bench = Bench(
        args.runs / f"{args.run}.safetensors",
        args.data,
        bank_pooling=product_pooling if args.neighbourhood else None,
    )
    same: Transform = lambda f: f.float()  # noqa: E731
    base = bench.patches(same)

    def seeded_subset(count: int) -> torch.Tensor:
        return base[torch.randperm(len(base), generator=torch.Generator().manual_seed(0))[:count]]

    # the position's scale: median distance of held-out patches to a random 4000-patch bank
    spread = float(
        PatchMemory(seeded_subset(BANK_SIZE), center=0.0, weight=1.0)
        .distances(bench.holdout[0][:16].float())
        .median()
    )
    grid = bench.train[0].shape[-2:]
    coords = torch.stack(
        torch.meshgrid(torch.linspace(0, 1, grid[0]), torch.linspace(0, 1, grid[1]), indexing="ij")
    )
    norms = [float(base[:, a:b].norm(dim=1).mean()) for a, b in LAYER_BLOCKS]
    balance = torch.cat(
        [torch.full((b - a,), 1.0 / n) for (a, b), n in zip(LAYER_BLOCKS, norms, strict=True)]
    )
    sample = seeded_subset(50_000)
    mean, covariance, _ = ledoit_wolf(sample.double().numpy())
    values, vectors = np.linalg.eigh(covariance)
    whitening = torch.from_numpy(vectors / np.sqrt(values)).float()
    shift = torch.from_numpy(mean).float()

    def sliced(a: int, b: int) -> Transform:
        return lambda f: f[:, a:b].float()

    def positioned(scale: float) -> Transform:
        return lambda f: torch.cat([f.float(), (scale * coords).expand(len(f), 2, *grid)], 1)

    def whitened(f: torch.Tensor) -> torch.Tensor:
        x = (f.float().permute(0, 2, 3, 1) - shift) @ whitening
        return x.permute(0, 3, 1, 2)

    def bank(candidates: torch.Tensor, transform: Transform) -> Callable[[], dict]:
        return lambda: bench.summed_maps(candidates, transform)

    variants: dict[str, Callable[[], dict]] = {
        "all": bank(base, same),
        "b4b10": bank(base[:, :152], sliced(0, 152)),
        "b4": bank(base[:, :40], sliced(0, 40)),
        "b10b14": bank(base[:, 40:], sliced(40, 344)),
        **{
            f"pos{fraction:g}": (
                lambda fraction=fraction: bench.summed_maps(
                    bench.patches(positioned(fraction * spread)), positioned(fraction * spread)
                )
            )
            for fraction in (0.5, 1.0, 2.0)
        },
        "flip": lambda: bench.summed_maps(
            torch.cat([base, bench.patches(same, bench.parts(bench.fit_images, flip=True)[0])]),
            same,
        ),
        "balanced": bank(base * balance, lambda f: f.float() * balance.view(1, -1, 1, 1)),
        "whitened": bank((base - shift) @ whitening, whitened),
        "glevels": lambda: bench.summed_maps(base, same, gaussian=bench.level_gaussian(False)),
        "glevels-sum": lambda: bench.summed_maps(base, same, gaussian=bench.level_gaussian(True)),
        "pmax": lambda: bench.summed_maps(base, same, fuse=np.maximum),
        "rings": lambda: bench.summed_maps(base, same, rings=True),
        "knn3": lambda: bench.summed_maps(base, same, neighbours=3),
        "tta": lambda: bench.flip_averaged(base),
        "res320": lambda: bench.finer_bank(320, BANK_SIZE),
        "res384": lambda: bench.finer_bank(384, BANK_SIZE),
        "res384b9k": lambda: bench.finer_bank(384, 9000),
    }
    chosen = args.only.split(",") if args.only else list(variants)
    for key, (_, maps, _) in bench.checks.items():
        report(f"simplenet alone {key}", image_scores(maps), maps, *bench.masks[key])
    for label in chosen:
        result = bench.report_variant(label, variants[label])
        if label == "all":
            score_and_blur_rows(bench, result)


if __name__ == "__main__":
    main()
