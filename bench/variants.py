"""Issue 12's variant table: one part of the default swapped, judged on the same two checks.

Fits on ``<data>/train/good`` (labels are never read), scores the development split and the
synthetic defects of ``bench/quality.py`` once, keeps the raw patch score maps in
``--runs/<name>.npz`` and prints, per check, image AUROC, pixel AUROC, AUPRO and recall at
0.1 / 1 / 5 % false alarms, with image AUROC / recall at 1 % per defect type. The swaps are
experiment-only patches of the model's internals; the product code has none of them. Fits
are SimpleNet alone unless ``--memory-bank-size N`` adds the patch memory (its distance map
is then part of the saved maps); image scores are the max of the map, plus the global
Gaussian term with ``--global-gaussian RUN``.

    python bench/variants.py NAME [--heads 2] [--epochs 3] [--seed 0] [--memory-bank-size 0]
        [--neighbourhood 3,3,5]     # neighbourhood mean per layer, fit and scoring
        [--score-neighbourhood 3,3,1]  # scoring only, on NAME's saved model
        [--per-dimension-noise]     # noise std per feature dimension, not isotropic
    python bench/variants.py --combine IMAGE_RUN HEATMAP_RUN  # image score of one, heatmap of other
    python bench/variants.py --global-gaussian RUN  # the global Gaussian term, 3 shrinkages
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import model.trainer as trainer_module
from model.artifact import load_artifact, save_artifact
from model.calibration import matching_scale
from model.data import list_images, list_test_samples, read_images
from model.defect_synthesis import synthetic_defect_set
from model.detector import AnomalyDetector, upsample_and_blur
from model.evaluation import _resize_mask, aupro, auroc, recall_at_false_alarm_rate
from model.features import PatchFeatureAggregator
from model.global_gaussian import global_pool, ledoit_wolf
from model.trainer import FitConfig, fit_detector, split_holdout

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtd"
SYNTHETIC_PER_KIND, SYNTHETIC_SEED = 50, 1234  # as bench/quality.py


def patch_neighbourhood(sizes: tuple[int, ...]) -> None:
    """Makes every fit and scorer average a ``k x k`` neighbourhood of layer i (1: none).

    The fit's ``in_map_layers`` finest layers average the in-map cells only at the border.
    """

    def pooled(feature_maps: list[torch.Tensor], in_map_layers: int = 0) -> list[torch.Tensor]:
        result = []
        for index, (feature_map, size) in enumerate(zip(feature_maps, sizes, strict=True)):
            feature_map = feature_map.contiguous(memory_format=torch.channels_last)
            if size > 1:
                feature_map = F.avg_pool2d(
                    feature_map, size, 1, size // 2, count_include_pad=index >= in_map_layers
                )
            result.append(feature_map)
        return result

    PatchFeatureAggregator.pooled_layers = staticmethod(pooled)


def patch_per_dimension_noise() -> None:
    """Noise std per feature dimension (its own std x the same ratio), mean equal to now."""
    original: Callable = trainer_module.train_head
    scale: dict[str, torch.Tensor] = {}

    def train_head(features: torch.Tensor, config: FitConfig, *args, **kwargs):
        std = features.reshape(-1, features.shape[-1]).std(dim=0)
        scale["sigma"] = std * (config.noise_sigma / float(std.mean()))
        return original(features, config, *args, **kwargs)

    class PerDimensionNoise:
        def __init__(self, sigma: float) -> None:
            del sigma

        def __call__(self, features: torch.Tensor, generator=None) -> torch.Tensor:
            noise = torch.randn(features.shape, generator=generator, dtype=features.dtype)
            return features + noise * scale["sigma"]

    trainer_module.train_head = train_head
    trainer_module.GaussianAnomalyGenerator = PerDimensionNoise


def check_sets(data: Path) -> dict[str, tuple[list[np.ndarray], list, list[str]]]:
    """The development split and the synthetic defects: images, masks (or None), kinds."""
    samples = list_test_samples(data)
    loaded = [sample.load() for sample in samples]
    goods = [image for (image, _), s in zip(loaded, samples, strict=True) if not s.is_anomalous]
    drawn = synthetic_defect_set(goods, per_kind=SYNTHETIC_PER_KIND, seed=SYNTHETIC_SEED)
    return {
        "dev": (
            [image for image, _ in loaded],
            [mask for _, mask in loaded],
            [sample.defect_class for sample in samples],
        ),
        "syn": (
            goods + [defect.image for defect in drawn],
            [None] * len(goods) + [defect.mask for defect in drawn],
            ["good"] * len(goods) + [defect.kind for defect in drawn],
        ),
    }


def resized_masks(masks: list, size: int) -> np.ndarray:
    """``[N, size, size]`` bool masks at the model's input size (None: an empty mask)."""
    empty = np.zeros((size, size), bool)
    return np.stack([empty if m is None else _resize_mask(m, size) for m in masks])


@torch.inference_mode()
def score_sets(detector: AnomalyDetector, sets: dict, path: Path) -> None:
    """Saves raw score maps, resized masks and kinds of every check to ``path`` (npz)."""
    size = detector.metadata.image_size
    arrays = {}
    for key, (images, masks, kinds) in sets.items():
        maps = [
            detector.score_maps(detector.preprocess(images[start : start + 16])).numpy()
            for start in range(0, len(images), 16)
        ]
        arrays[f"{key}_maps"] = np.concatenate(maps)
        arrays[f"{key}_masks"] = resized_masks(masks, size)
        arrays[f"{key}_kinds"] = np.array(kinds)
    np.savez_compressed(path, **arrays)


def report(title: str, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray, kinds) -> None:
    """Prints one check's line: image and pixel metrics, per type (maps at grid size)."""
    size = masks.shape[-1]
    heat = upsample_and_blur(torch.from_numpy(maps).float(), (size, size), 4.0).numpy()
    report_heat(title, scores, heat, masks, kinds)


def report_heat(title: str, scores: np.ndarray, heat: np.ndarray, masks: np.ndarray, kinds) -> None:
    """Prints one check's line from heatmaps already at the masks' size."""
    truth = kinds != "good"
    recalls = [
        recall_at_false_alarm_rate(scores[~truth], scores[truth], r) for r in (0.001, 0.01, 0.05)
    ]
    per_type = []
    for kind in sorted(set(kinds) - {"good"}):
        chosen = ~truth | (kinds == kind)
        per_type.append(
            f"{kind} {auroc(truth[chosen], scores[chosen]):.3f}/"
            f"{recall_at_false_alarm_rate(scores[~truth], scores[kinds == kind], 0.01):.2f}"
        )
    print(
        f"{title}: image AUROC {auroc(truth, scores):.3f}  pixel AUROC "
        f"{auroc(masks.ravel(), heat.ravel()):.3f}  AUPRO {aupro(masks, heat):.3f}  recall at "
        f"0.1/1/5% false alarms {recalls[0]:.3f} / {recalls[1]:.3f} / {recalls[2]:.3f}  | "
        + "  ".join(per_type),
        flush=True,
    )


def image_scores(maps: np.ndarray) -> np.ndarray:
    """Image score = max of the patch map, as the detector."""
    return maps.reshape(len(maps), -1).max(axis=1)


def print_run(runs: Path, image_run: str, heatmap_run: str) -> None:
    """Image scores from one saved run, heatmaps from another (the same run: plain)."""
    image_data, heat_data = np.load(runs / f"{image_run}.npz"), np.load(runs / f"{heatmap_run}.npz")
    for key in ("dev", "syn"):
        title = image_run if image_run == heatmap_run else f"{image_run} + {heatmap_run} heatmaps"
        report(
            f"{title} {key}",
            image_scores(image_data[f"{key}_maps"]),
            heat_data[f"{key}_maps"],
            heat_data[f"{key}_masks"],
            heat_data[f"{key}_kinds"],
        )


def global_gaussian(runs: Path, name: str, data: Path, sets: dict) -> None:
    """The global Gaussian term (``model.global_gaussian``) on a saved run, three shrinkages.

    Fitted on the run's training images, scaled on its held-out good images as the fit does
    (``matching_scale``), added to the SimpleNet image score; the covariance shrunk by
    Ledoit-Wolf (the product's rule) or by a fixed 0.01 / 0.1 towards the scaled identity.
    """
    detector = load_artifact(runs / f"{name}.safetensors")

    @torch.inference_mode()
    def pooled(images: list[np.ndarray]) -> np.ndarray:
        features = [
            global_pool(detector.backbone(detector.preprocess(images[start : start + 16])))
            for start in range(0, len(images), 16)
        ]
        return torch.cat(features).numpy().astype(np.float64)

    @torch.inference_mode()
    def simplenet_scores(images: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(
            [
                image_scores(detector.score_maps(detector.preprocess(images[s : s + 16])).numpy())
                for s in range(0, len(images), 16)
            ]
        )

    train_images = read_images(list_images(data / "train" / "good"))
    fit_index, holdout_index = split_holdout(len(train_images), 0.2, 2, 0)
    train = pooled(train_images)
    held_out = simplenet_scores([train_images[i] for i in holdout_index])
    mean, _, lw_shrinkage = ledoit_wolf(train[fit_index])
    empirical = np.cov(train[fit_index], rowvar=False, bias=True)
    identity = np.trace(empirical) / len(empirical) * np.eye(len(empirical))
    saved = np.load(runs / f"{name}.npz")
    checks = {key: pooled(images) for key, (images, _, _) in sets.items()}
    for label, shrink in ((f"ledoit-wolf {lw_shrinkage:.3f}", lw_shrinkage), ("0.01", 0.01),
                          ("0.1", 0.1)):
        precision = np.linalg.inv((1 - shrink) * empirical + shrink * identity)

        def distance(x: np.ndarray, precision: np.ndarray = precision) -> np.ndarray:
            centred = x - mean
            return np.sqrt(np.einsum("ij,jk,ik->i", centred, precision, centred))

        center, weight = matching_scale(held_out, distance(train[holdout_index]))
        for key in ("dev", "syn"):
            maps, masks, kinds = (saved[f"{key}_{part}"] for part in ("maps", "masks", "kinds"))
            simplenet = image_scores(maps)
            if shrink == lw_shrinkage:
                report(f"{name} {key} map max alone", simplenet, maps, masks, kinds)
                report(f"{name} {key} gaussian alone", distance(checks[key]), maps, masks, kinds)
            summed = simplenet + weight * (distance(checks[key]) - center)
            report(f"{name} {key} sum, shrinkage {label}", summed, maps, masks, kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="run name (fit unless its model is saved)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=Path, default=Path("runs/variants"))
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-bank-size", type=int, default=0, help="0: SimpleNet alone")
    parser.add_argument(
        "--second-scale", type=float, default=FitConfig().second_scale, help="0: one input scale"
    )
    parser.add_argument("--neighbourhood", default=None, help="per layer, e.g. 3,3,5")
    parser.add_argument("--score-neighbourhood", default=None, help="scoring only, e.g. 3,3,1")
    parser.add_argument("--per-dimension-noise", action="store_true")
    parser.add_argument("--combine", nargs=2, metavar=("IMAGE_RUN", "HEATMAP_RUN"))
    parser.add_argument("--global-gaussian", metavar="RUN")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.combine:
        print_run(args.runs, *args.combine)
        return
    sets = check_sets(args.data)
    if args.global_gaussian:
        global_gaussian(args.runs, args.global_gaussian, args.data, sets)
        return
    if args.name is None:
        parser.error("a run name is required")
    model_path = args.runs / f"{args.name}.safetensors"
    if args.neighbourhood:
        patch_neighbourhood(tuple(int(k) for k in args.neighbourhood.split(",")))
    if args.per_dimension_noise:
        patch_per_dimension_noise()
    if model_path.exists():
        detector = load_artifact(model_path)
    else:
        config = FitConfig(
            heads=args.heads,
            epochs=args.epochs,
            seed=args.seed,
            global_gaussian=False,
            memory_bank_size=args.memory_bank_size,
            second_scale=args.second_scale,
        )
        images = read_images(list_images(args.data / "train" / "good"))
        detector = fit_detector(images, config=config, product_line=args.data.name)
        save_artifact(detector, model_path)
    name = args.name
    if args.score_neighbourhood:
        patch_neighbourhood(tuple(int(k) for k in args.score_neighbourhood.split(",")))
        detector = load_artifact(model_path)  # fold again with the scoring neighbourhood
        name = f"{args.name}-scored-{args.score_neighbourhood.replace(',', '')}"
    score_sets(detector, sets, args.runs / f"{name}.npz")
    print_run(args.runs, name, name)


if __name__ == "__main__":
    main()
