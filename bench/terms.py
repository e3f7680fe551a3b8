"""Issue 12 (stop 32): what each score term adds, and where pixel AUROC is lost.

Scores the development split and the synthetic defects (``bench/variants.py``'s checks)
with saved artifacts, keeping each term apart: SimpleNet's map and the memory term's map at
each input scale (as fitted: scaled, each scale's map on its own grid) and the Gaussian
term. Then, per model and as means over the models:

1. pixel AUROC of each term's heatmap alone (256 px / 192 px maps resized to the full grid
   as ``merge_scales`` does) and of the default merge, with the defective pixels within
   16 px of the image edge (256 px input) and the others scored separately against every
   normal pixel;
2. where the default merge loses pixel AUROC: the share of (defective pixel, normal pixel)
   pairs ordered wrongly (ties counted), split once by where the normal pixel lies (a good
   image, or a defective image at a distance band from the defect) and once by where the
   defective pixel lies (near the image edge or inside); each split sums to about 1 - pixel
   AUROC;
3. the image and pixel figures (image AUROC / pixel AUROC / AUPRO / recall at 1% false
   alarms) with the memory term's weight multiplied by 1 (as fitted), 1.5, 2 or 3, and with
   either map term alone, the Gaussian term kept as fitted. This is not what a fit with
   another ``memory_emphasis`` gives (a fit matches the Gaussian term to the emphasised
   map, so it grows with it); ``bench/quality.py --memory-emphasis K`` measures that.

Labels are read only to explain fitted models, never to fit one.

    python bench/terms.py --model runs/e1-s0.safetensors --model runs/e1-s1.safetensors ...

The artifacts of stop 32: ``linewatch-model fit --data ../shared/data/mtd/train/good --line
mtd --seed N --memory-emphasis 1 --output runs/e1-sN.safetensors`` (stop 31's default).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from variants import DEFAULT_DATA, check_sets, resized_masks

from model.artifact import load_artifact
from model.detector import AnomalyDetector, heatmap_operators
from model.evaluation import aupro, auroc, recall_at_false_alarm_rate

EDGE_BAND = 16  # pixels of the model's input
DISTANCE_BANDS = (0, 8, 16, 32, 64, 10_000)
WEIGHTS = (1.0, 1.5, 2.0, 3.0)


@torch.inference_mode()
def score_terms(detector: AnomalyDetector, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each term of every image: ``sn``/``mem`` ``[N, 2, h, w]`` (full, second scale), ``gg``."""
    if detector.patch_memory is None or detector.global_gaussian is None:
        raise SystemExit("bench/terms.py needs a model with the memory bank and the Gaussian term")
    if detector.rescaler is None:
        raise SystemExit("bench/terms.py needs a model with the second input scale")
    parts: dict[str, list[np.ndarray]] = {"sn": [], "mem": [], "gg": []}
    for start in range(0, len(images), 16):
        batch = detector.preprocess(images[start : start + 16])
        layer_maps, maps = detector.scale_maps(batch)
        memory = [
            detector.patch_memory(detector.aggregator([layer.float() for layer in layers]))
            for layers in layer_maps
        ]
        grid = maps[0].shape[-2:]
        parts["sn"].append(np.stack([m.numpy() for m in _on_grid(maps, grid)], 1))
        parts["mem"].append(np.stack([m.numpy() for m in _on_grid(memory, grid)], 1))
        parts["gg"].append(detector.global_gaussian(layer_maps[0]).numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def _on_grid(maps: list[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
    """Each scale's map on the full grid (the second one resized as ``merge_scales`` does)."""
    full, second = maps
    grown = F.interpolate(second.unsqueeze(1), size=grid, mode="bilinear", align_corners=False)
    return [full, grown.squeeze(1)]


def heatmaps(maps: np.ndarray, size: int) -> np.ndarray:
    """Score maps ``[N, h, w]`` -> heatmaps ``[N, size, size]`` (the product's operators)."""
    operator_h, operator_w = heatmap_operators(maps.shape[-2:], (size, size))
    grid = torch.from_numpy(maps).float()
    return torch.matmul(torch.matmul(operator_h, grid), operator_w.T).numpy()


def pair_auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUROC of two score sets."""
    truth = np.r_[np.ones(positives.size, bool), np.zeros(negatives.size, bool)]
    return auroc(truth, np.r_[positives, negatives])


def edge_distance(size: int) -> np.ndarray:
    """``[size, size]`` distance of each pixel to the nearest image edge."""
    ys, xs = np.mgrid[0:size, 0:size]
    return np.minimum(np.minimum(ys, size - 1 - ys), np.minimum(xs, size - 1 - xs))


def term_lines(terms: dict, masks: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """Pixel AUROC of each term alone and of the merge: all, edge and inner defective pixels."""
    size = masks.shape[-1]
    inner = edge_distance(size) >= EDGE_BAND
    merged = terms["sn"].mean(1) + terms["mem"].mean(1)
    named = {
        "SimpleNet 256 px": terms["sn"][:, 0], "SimpleNet 192 px": terms["sn"][:, 1],
        "memory 256 px": terms["mem"][:, 0], "memory 192 px": terms["mem"][:, 1],
        "default merge": merged,
    }
    lines = {}
    for name, maps in named.items():
        heat = heatmaps(maps, size)
        negatives = heat[~masks]
        edge_pos = heat[:, ~inner][masks[:, ~inner]]
        inner_pos = heat[:, inner][masks[:, inner]]
        lines[name] = (
            auroc(masks.ravel(), heat.ravel()),
            pair_auroc(edge_pos, negatives),
            pair_auroc(inner_pos, negatives),
        )
    return lines


def loss_shares(terms: dict, masks: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Share of wrongly ordered (defective, normal) pixel pairs of the default merge, by place."""
    size = masks.shape[-1]
    heat = heatmaps(terms["sn"].mean(1) + terms["mem"].mean(1), size)
    positives = np.sort(heat[masks])
    pairs = positives.size * (~masks).sum()
    good = kinds == "good"
    shares = {"normal pixel in a good image": _below(positives, heat[good].ravel()) / pairs}
    distance = np.stack([
        cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5) for mask in masks[~good]
    ])
    normal, far = heat[~good][~masks[~good]], distance[~masks[~good]]
    for low, high in itertools.pairwise(DISTANCE_BANDS):
        chosen = normal[(far > low) & (far <= high)]
        label = f"normal pixel in a defective image, ({low}, {min(high, size)}] px from the defect"
        shares[label] = _below(positives, chosen) / pairs
    negatives = np.sort(heat[~masks])
    inner = edge_distance(size) >= EDGE_BAND
    for name, place in ((f"defective pixel within {EDGE_BAND} px of the edge", ~inner),
                        ("defective pixel inside", inner)):
        chosen = heat[:, place][masks[:, place]]
        above = negatives.size - np.searchsorted(negatives, chosen, side="left")
        shares[f"{name} ({chosen.size} of {masks.sum()})"] = float(above.sum()) / pairs
    return shares


def _below(sorted_positives: np.ndarray, negatives: np.ndarray) -> float:
    """Pairs in which a negative scores at least as high as a positive."""
    return float(np.searchsorted(sorted_positives, negatives, side="right").sum())


def weighted_figures(terms: dict, masks: np.ndarray, truth: np.ndarray) -> dict[str, list[float]]:
    """Image AUROC / pixel AUROC / AUPRO / recall at 1% per weighting of the two map terms."""
    rows = {}
    variants = [(f"memory x{w:g}", 1.0, w) for w in WEIGHTS]
    variants += [("memory alone", 0.0, 1.0), ("SimpleNet alone", 1.0, 0.0)]
    for name, simplenet, memory in variants:
        maps = simplenet * terms["sn"].mean(1) + memory * terms["mem"].mean(1)
        scores = maps.reshape(len(maps), -1).max(axis=1) + terms["gg"]
        heat = heatmaps(maps, masks.shape[-1])
        rows[name] = [
            auroc(truth, scores), auroc(masks.ravel(), heat.ravel()), aupro(masks, heat),
            recall_at_false_alarm_rate(scores[~truth], scores[truth], 0.01),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="saved artifact (repeat for several seeds)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    sets = check_sets(args.data)
    collected: dict[str, dict[str, list]] = {}
    for path in args.model:
        detector = load_artifact(path)
        size = detector.metadata.image_size
        for key, (images, masks, kinds) in sets.items():
            kinds = np.array(kinds)
            resized = resized_masks(masks, size)
            terms = score_terms(detector, images)
            results = {
                "terms": term_lines(terms, resized),
                "loss": loss_shares(terms, resized, kinds),
                "weights": weighted_figures(terms, resized, kinds != "good"),
            }
            print(f"\n== {path.name}, {key}")
            _print(results)
            for part, values in results.items():
                for name, value in values.items():
                    collected.setdefault(f"{key}|{part}", {}).setdefault(name, []).append(value)
    for key in ("dev", "syn"):
        print(f"\n== means over {len(args.model)} models, {key}")
        means = {}
        for part in ("terms", "loss", "weights"):
            values = collected[f"{key}|{part}"]
            means[part] = {name: np.mean(runs, axis=0) for name, runs in values.items()}
        _print(means)


def _print(results: dict) -> None:
    print("pixel AUROC of each term (all / defective pixels near the edge / inside):")
    for name, (total, edge, inner) in results["terms"].items():
        print(f"  {name:18s} {total:.4f} / {edge:.4f} / {inner:.4f}")
    loss = results["loss"]
    print("wrongly ordered pixel pairs of the default merge (1 - pixel AUROC, by place):")
    for name, share in loss.items():
        print(f"  {share:.4f}  {name}")
    print("image AUROC / pixel AUROC / AUPRO / recall at 1% false alarms (Gaussian as fitted):")
    for name, figures in results["weights"].items():
        print(f"  {name:16s} " + " / ".join(f"{value:.3f}" for value in figures))


if __name__ == "__main__":
    main()
