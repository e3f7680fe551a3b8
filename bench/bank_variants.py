"""Issue 12: variants of the patch memory bank, the image score and the heatmap blur.

Runs on a SimpleNet-alone run that ``bench/variants.py NAME`` fitted and saved (2 heads,
seed 0 in the note's table). For each variant it builds the memory bank as the product
does (greedy coreset of 4000 training patches, distance scaled on the held-out good
images, added to the SimpleNet map), optionally with the global Gaussian term on top
(held-out scaled, as the product), and prints the same two checks as ``bench/variants.py``.
Only the bank's feature space changes between variants; the product has none of them.

Variants (``--only`` picks some):
    all            the product's bank: every layer, Euclidean (reference)
    b4b10, b4, b10b14   the bank on some of the layers only (stride 8+16, 8, 16+32)
    pos0.5, pos1, pos2  patch position (y, x in [0, 1]) appended, times 0.5 / 1 / 2 median
                   nearest-neighbour distance (a position-aware bank)
    flip           training patches of horizontally flipped images added to the candidates
    balanced       each layer's block divided by its mean patch norm (equal layer weight)
    whitened       features whitened by the training patches' Ledoit-Wolf covariance
and, on the reference ``all`` maps: image score as the max of the blurred heatmap (sigma
4 / 8) and as the mean of the top 4 / 16 patches; pixel metrics at heatmap sigma 2-8.

    python bench/variants.py d2s0 --heads 2 && python bench/bank_variants.py d2s0
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from variants import DEFAULT_DATA, check_sets, image_scores, report, resized_masks

from model.artifact import load_artifact
from model.calibration import matching_scale
from model.data import list_images, read_images
from model.detector import upsample_and_blur
from model.evaluation import aupro, auroc
from model.global_gaussian import GlobalGaussian, global_pool, ledoit_wolf
from model.patch_memory import PatchMemory, greedy_coreset
from model.trainer import split_holdout

BANK_SIZE = 4000
LAYER_BLOCKS = ((0, 40), (40, 152), (152, 344))  # Lite0 blocks 4 / 10 / 14, concatenated
Parts = tuple[torch.Tensor, np.ndarray, torch.Tensor]  # patch features, SimpleNet maps, pooled
Transform = Callable[[torch.Tensor], torch.Tensor]  # [B, D, h, w] -> [B, D', h, w]


class Bench:
    """The cached features of one saved run: training, held-out and both checks."""

    def __init__(self, run: Path, data: Path) -> None:
        self.detector = load_artifact(run)
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
        self.holdout = self.parts([images[i] for i in holdout_index])
        self.checks = {key: self.parts(images) for key, (images, _, _) in self.sets.items()}
        self.gaussian, _ = GlobalGaussian.fit(self.train[2])

    @torch.inference_mode()
    def parts(self, images: list[np.ndarray], flip: bool = False) -> Parts:
        """Patch features (float16), SimpleNet maps and pooled maps of ``images``."""
        features, maps, pooled = [], [], []
        for start in range(0, len(images), 16):
            batch = self.detector.preprocess(images[start : start + 16])
            if flip:
                batch = batch.flip(-1)
            layer_maps, score_maps = self.detector.backbone_and_score_maps(batch)
            features.append(self.detector.aggregator([m.float() for m in layer_maps]).half())
            maps.append(score_maps)
            pooled.append(global_pool(layer_maps))
        return torch.cat(features), torch.cat(maps).double().numpy(), torch.cat(pooled)

    def patches(self, transform: Transform, features: torch.Tensor | None = None) -> torch.Tensor:
        """Training patches ``[N, D']`` in a variant's feature space."""
        mapped = transform(self.train[0] if features is None else features)
        return mapped.permute(0, 2, 3, 1).reshape(-1, mapped.shape[1])

    def summed_maps(self, candidates: torch.Tensor, transform: Transform) -> dict[str, tuple]:
        """Per check: SimpleNet + scaled bank map, and the held-out-scaled Gaussian term."""
        memory = PatchMemory(
            candidates[greedy_coreset(candidates, BANK_SIZE, seed=0)], center=0.0, weight=1.0
        )

        @torch.inference_mode()
        def distances(features: torch.Tensor) -> np.ndarray:
            chunks = range(0, len(features), 16)
            parts = [memory.distances(transform(features[s : s + 16])) for s in chunks]
            return torch.cat(parts).double().numpy()

        held_maps, held_distances = self.holdout[1], distances(self.holdout[0])
        center, weight = matching_scale(image_scores(held_maps), image_scores(held_distances))
        held = held_maps + weight * (held_distances - center)
        g_center, g_weight = matching_scale(image_scores(held), self.mahalanobis(self.holdout[2]))
        result = {}
        for key, (features, maps, pooled) in self.checks.items():
            summed = maps + weight * (distances(features) - center)
            result[key] = (summed, g_weight * (self.mahalanobis(pooled) - g_center))
        return result

    def mahalanobis(self, pooled: torch.Tensor) -> np.ndarray:
        """Unscaled global Gaussian distances."""
        return self.gaussian.distances(pooled).double().numpy()

    def report_variant(self, label: str, candidates: torch.Tensor, transform: Transform) -> dict:
        """Prints one variant's rows; returns its summed maps and Gaussian terms."""
        started = time.perf_counter()
        result = self.summed_maps(candidates, transform)
        for key, (summed, term) in result.items():
            scores = image_scores(summed)
            report(f"{label} {key} sum", scores, summed, *self.masks[key])
            report(f"{label} {key} sum+gauss", scores + term, summed, *self.masks[key])
        print(f"({label}: {time.perf_counter() - started:.0f} s)", flush=True)
        return result


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
    }
    for label, score in scores.items():
        for key, (summed, _) in reference.items():
            report(f"all, image score {label} {key}", score(summed), summed, *bench.masks[key])
    for key, (summed, _) in reference.items():
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bench = Bench(args.runs / f"{args.run}.safetensors", args.data)
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

    variants: dict[str, Callable[[], tuple[torch.Tensor, Transform]]] = {
        "all": lambda: (base, same),
        "b4b10": lambda: (base[:, :152], sliced(0, 152)),
        "b4": lambda: (base[:, :40], sliced(0, 40)),
        "b10b14": lambda: (base[:, 40:], sliced(40, 344)),
        **{
            f"pos{fraction:g}": (
                lambda fraction=fraction: (
                    bench.patches(positioned(fraction * spread)),
                    positioned(fraction * spread),
                )
            )
            for fraction in (0.5, 1.0, 2.0)
        },
        "flip": lambda: (
            torch.cat([base, bench.patches(same, bench.parts(bench.fit_images, flip=True)[0])]),
            same,
        ),
        "balanced": lambda: (base * balance, lambda f: f.float() * balance.view(1, -1, 1, 1)),
        "whitened": lambda: ((base - shift) @ whitening, whitened),
    }
    chosen = args.only.split(",") if args.only else list(variants)
    for key, (_, maps, _) in bench.checks.items():
        report(f"simplenet alone {key}", image_scores(maps), maps, *bench.masks[key])
    for label in chosen:
        candidates, transform = variants[label]()
        result = bench.report_variant(label, candidates, transform)
        if label == "all":
            score_and_blur_rows(bench, result)


if __name__ == "__main__":
    main()
