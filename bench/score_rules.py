"""How the two input scales' maps are merged, on saved default detectors (issue 12, stop 30).

Stop 29's default averages the 256 px and the 192 px score maps (``merge_scales``). A small
defect (a blowhole under one stride-8 patch) peaks at the full scale and is blurred at the
second, so the mean halves what only the full scale sees; a faint large blotch is the
other way round. This script scores the default detector's raw terms once per seed (each
scale's SimpleNet map and nearest-neighbour distance map, the Gaussian distance) on the
held-out good images of the fit, the development split and the synthetic defects, then
applies each merge rule the way the fit does: the memory term's center and weight matched
on the held-out maxima of the merged maps, the Gaussian term on the merged image scores
(``model.calibration.matching_scale``), no anomaly label. Rules:

- ``mean``: the default (must print ``bench/quality.py``'s figures for the seed);
- ``max``: per position, the larger of the two scales' maps (heatmap and image score);
- ``score-max``: heatmap as the default; image score the larger of the two scales' own
  map maxima (each scale's SimpleNet map plus its memory map);
- ``full``: the full scale's maps only, the second scale ignored at test time (what the
  second scale adds to a detector fitted on both).

``--spreads`` (stop 31) also matches the two terms with other estimates of a score's spread
on the held-out good images (``spread_matching``; the product's is ``q99``, the 99th
percentile minus the median, which with 110 held-out images is set by the two highest);
``--rules mean --spreads q99 q95 q90 iqr std`` prints every rule's line per seed and the
weights it gives (memory, Gaussian: ``q99`` .117 / .158, .160 / .166, .102 / .089 at seeds
0 / 1 / 2; ``iqr`` .084 / .052, .059 / .050, .094 / .056).

``--term-ranks [NAME ...]`` (stop 31) prints, under each seed's development ``mean`` line,
each term of the four highest good tiles and of the named ones with its rank among the 199
good tiles. At stop 31 (``--rules mean --term-ranks good/exp4_num_321478
good/exp2_num_3524``) the tile that sets the threshold is high in the memory and Gaussian
terms at one seed only: ``good/exp4_num_321478`` memory 3rd, Gaussian distance 24.7, total
2nd at seed 0; memory 62nd / 94th, distance 20.2 / 20.0, total 54th / 60th at seeds 1 / 2
(``bench/full_bank.py`` follows this up).

Detectors come from ``bench/ensemble.py``'s runs directory
(``efficientnet_lite0-sN-trainterms``), fitted with the defaults when absent but with the
memory bank and Gaussian of the training share (``all_images_in_terms=False``), so that the
held-out images are unseen by both terms; the raw terms are cached next to them.

    python bench/score_rules.py [--seeds 0 1 2] [--runs-dir runs/ensemble]

Measured at stop 30 (``--runs-dir runs/ens30``, seeds 0 / 1 / 2, one run; image AUROC /
pixel AUROC / AUPRO / recall at 1% false alarms, means of the three seeds):

    mean (default)  development .978 / .964 / .738 / .765   synthetic .971 / .883 / .817 / .863
    max             development .978 / .963 / .752 / .750   synthetic .971 / .885 / .824 / .858
    score-max       development .978 / .964 / .738 / .733   synthetic .970 / .883 / .817 / .855
    full            development .978 / .966 / .783 / .750   synthetic .966 / .856 / .815 / .830

Per seed, recall at 1% false alarms (development | synthetic): mean .755 / .705 / .835 |
.865 / .840 / .885; max .735 / .720 / .795 | .845 / .845 / .885; score-max .710 / .705 /
.785 | .835 / .845 / .885. The ``mean`` rule reprints ``bench/quality.py``'s stop-29
figures for each seed to .001 in the AUROCs and AUPRO and within one image in recall (.755
against .760 at seed 0, .835 against .830 at seed 2: this script scores in batches of 16
and matches the memory term on its own held-out pass). ``max`` sharpens the maps (AUPRO
+.014 / +.007) and loses recall at 1% on both checks; taking the larger scale only for the
image score loses more; dropping the second scale at test time gives back its synthetic
gain (pixel AUROC .883 -> .856). The default's mean stays.

The ``highest good`` line under each seed's development ``mean`` row names the good tiles
that set the 1% threshold (the second highest of 199). The rim tile ``good/exp5_num_117030``
is first at every seed (raw 3.88 / 4.39 / 2.84); the second is another tile at each seed
(1.87 / 2.53 / 1.05), and at seed 1 it stands 0.7 above the third: recall at 1% false alarms
swings with that one tile, which is most of its spread over seeds.

Measured at stop 31 (``--runs-dir runs/ens31 --rules mean --spreads q99 q95 q90 iqr std``,
detectors fitted on another machine than stop 30's, whose ``q99`` means are within .003 of
stop 30's ``mean`` row, per-seed development recall .760 / .705 / .830 against .755 / .705 /
.835; means of seeds 0 / 1 / 2, image AUROC / pixel AUROC / AUPRO / recall at 1% false
alarms):

    q99 (product)  development .978 / .964 / .736 / .765   synthetic .971 / .884 / .818 / .862
    q95            development .978 / .964 / .732 / .770   synthetic .971 / .882 / .814 / .865
    q90            development .979 / .964 / .727 / .770   synthetic .972 / .881 / .810 / .873
    iqr            development .979 / .964 / .726 / .763   synthetic .974 / .880 / .808 / .873
    std            development .979 / .964 / .732 / .772   synthetic .972 / .882 / .814 / .872

The weights move by up to 2x with the estimate and the seed, the figures by at most .01
(recall at 1%, within the one-tile steps of .005) and AUPRO by up to -.010: the terms'
weights are not what makes recall swing over seeds; ``q99`` stays.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from ensemble import load_or_fit
from variants import DEFAULT_DATA, check_sets, report, resized_masks

from model.calibration import matching_scale
from model.data import list_images, list_test_samples, read_images
from model.detector import AnomalyDetector
from model.global_gaussian import global_pool
from model.trainer import FitConfig, split_holdout

RULES = ("mean", "max", "score-max", "full")
SPREAD_QUANTILES = {"q95": 0.95, "q90": 0.90}
SPREADS = ("q99", "q95", "q90", "iqr", "std")


@torch.inference_mode()
def raw_terms(detector: AnomalyDetector, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each scale's SimpleNet and distance maps (second scale resized to the full grid)."""
    assert detector.patch_memory is not None and detector.global_gaussian is not None
    parts: dict[str, list[np.ndarray]] = {"s0": [], "s1": [], "d0": [], "d1": [], "g": []}
    for start in range(0, len(images), 16):
        batch = detector.preprocess(images[start : start + 16])
        layer_maps, maps = detector.scale_maps(batch)
        distances = [
            detector.patch_memory.distances(detector.aggregator([m.float() for m in layers]))
            for layers in layer_maps
        ]
        grid = maps[0].shape[-2:]
        for name, scale_maps in (("s", maps), ("d", distances)):
            parts[f"{name}0"].append(scale_maps[0].numpy())
            grown = F.interpolate(scale_maps[1][:, None], size=grid, mode="bilinear")[:, 0]
            parts[f"{name}1"].append(grown.numpy())
        parts["g"].append(detector.global_gaussian.distances(global_pool(layer_maps[0])).numpy())
    return {key: np.concatenate(value).astype(np.float64) for key, value in parts.items()}


def spread_matching(spread: str) -> Callable[[np.ndarray, np.ndarray], tuple[float, float]]:
    """``matching_scale`` with another estimate of a score's spread on the held-out images.

    ``q99`` is the product's (99th percentile minus the median: with 110 held-out images
    that is set by the two highest); the others read more of the held-out scores: ``q95``
    and ``q90`` (percentile minus median), ``iqr`` (75th minus 25th percentile), ``std``.
    The center stays the median. No anomaly label is involved in any of them.
    """
    if spread == "q99":
        return matching_scale

    def width(values: np.ndarray) -> float:
        if spread == "std":
            return float(np.std(values))
        if spread == "iqr":
            return float(np.quantile(values, 0.75) - np.quantile(values, 0.25))
        return float(np.quantile(values, SPREAD_QUANTILES[spread]) - np.median(values))

    def matching(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
        center = float(np.median(other))
        if width(other) <= 0.0 or width(reference) <= 0.0:
            return center, 1.0
        return center, width(reference) / width(other)

    return matching


def merged(rule: str, parts: dict, name: str) -> np.ndarray:
    """The two scales' ``name`` maps (``s``: SimpleNet, ``d``: distances) merged under ``rule``."""
    if rule == "full":
        return parts[f"{name}0"]
    if rule == "max":
        return np.maximum(parts[f"{name}0"], parts[f"{name}1"])
    return (parts[f"{name}0"] + parts[f"{name}1"]) / 2


def maxima(maps: np.ndarray) -> np.ndarray:
    """Each map's maximum, ``[N]``."""
    return maps.reshape(len(maps), -1).max(axis=1)


def map_and_raw(
    rule: str, parts: dict, center: float, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merged score maps with the memory term, and the image scores before the Gaussian."""
    maps = merged(rule, parts, "s") + weight * (merged(rule, parts, "d") - center)
    if rule != "score-max":
        return maps, maxima(maps)
    per_scale = [parts[f"s{k}"] + weight * (parts[f"d{k}"] - center) for k in (0, 1)]
    return maps, np.maximum(maxima(per_scale[0]), maxima(per_scale[1]))


def term_scaling(
    rule: str, holdout: dict, spread: str = "q99"
) -> tuple[float, float, float, float]:
    """Center and weight of the memory term, then of the Gaussian, matched on ``holdout``."""
    matching = spread_matching(spread)
    center, weight = matching(
        maxima(merged(rule, holdout, "s")), maxima(merged(rule, holdout, "d"))
    )
    _, held_raw = map_and_raw(rule, holdout, center, weight)
    return (center, weight, *matching(held_raw, holdout["g"]))


def apply_rule(
    rule: str, holdout: dict, terms: dict, spread: str = "q99"
) -> tuple[np.ndarray, np.ndarray]:
    """Image scores ``[N]`` and maps ``[N, h, w]`` of ``terms`` under ``rule``."""
    center, weight, g_center, g_weight = term_scaling(rule, holdout, spread)
    maps, raw = map_and_raw(rule, terms, center, weight)
    return raw + g_weight * (terms["g"] - g_center), maps


def print_highest_good(scores: np.ndarray, kinds: np.ndarray, names: list[str]) -> None:
    """The good images that set the 1% threshold: the five highest, raw score and name."""
    good = np.flatnonzero(kinds == "good")
    top = good[np.argsort(-scores[good])[:5]]
    defects = scores[kinds != "good"]
    print(
        "  highest good: "
        + ", ".join(f"{names[i]} {scores[i]:.3f}" for i in top)
        + f"; defects scoring above the second: {np.mean(defects > scores[top[1]]):.3f}"
    )


def print_term_ranks(
    holdout: dict, terms: dict, kinds: np.ndarray, names: list[str], also: list[str]
) -> None:
    """Each term of the ``mean`` rule for the good images that score highest, and its rank.

    ``also`` names more test images (``good/exp4_num_321478``) to print after those four.

    The image score is the merged map's maximum plus the Gaussian term; the map's maximum
    is shown with the SimpleNet map's and the memory term's own maxima (ranks among the good
    images, 1 = highest), to see which term puts a good image at the top.
    """
    center, weight, g_center, g_weight = term_scaling("mean", holdout)
    _, map_max = map_and_raw("mean", terms, center, weight)
    parts = {
        "SimpleNet max": maxima(merged("mean", terms, "s")),
        "memory max": maxima(weight * (merged("mean", terms, "d") - center)),
        "Gaussian": g_weight * (terms["g"] - g_center),
    }
    total = map_max + parts["Gaussian"]
    good = np.flatnonzero(kinds == "good")
    chosen = list(good[np.argsort(-total[good])[:4]])
    chosen += [names.index(name) for name in also if names.index(name) not in chosen]
    for i in chosen:
        ranks = "  ".join(
            f"{label} {values[i]:.2f} (rank {int(np.sum(values[good] > values[i])) + 1})"
            for label, values in {**parts, "total": total}.items()
        )
        print(f"    {names[i]}: {ranks}; Gaussian distance {terms['g'][i]:.1f}")


def cached_terms(detector: AnomalyDetector, images: list[np.ndarray], path: Path) -> dict:
    """:func:`raw_terms`, saved to (and loaded from) ``path``."""
    if path.exists():
        with np.load(path) as saved:
            return dict(saved)
    terms = raw_terms(detector, images)
    np.savez_compressed(path, **terms)
    return terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ensemble"))
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument(
        "--spreads",
        nargs="+",
        choices=SPREADS,
        default=["q99"],
        help="spread estimates for matching the terms (q99 is the product's)",
    )
    parser.add_argument(
        "--term-ranks",
        nargs="*",
        metavar="NAME",
        default=None,
        help="under each development mean line, every term of the four highest good images "
        "and of the named test images (e.g. good/exp4_num_321478)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    config = FitConfig()
    train = read_images(list_images(args.data / "train" / "good"))
    sets = check_sets(args.data)
    names = [sample.name for sample in list_test_samples(args.data)]  # check_sets' dev order
    for seed in args.seeds:
        detector = load_or_fit(
            f"efficientnet_lite0:{seed}", args.runs_dir, args.data, all_images_in_terms=False
        )
        if detector.metadata.second_image_size is None or detector.metadata.terms_include_holdout:
            raise SystemExit(
                "the saved detector has one input scale or a bank holding its held-out images; "
                "refit with the defaults and all_images_in_terms=False"
            )
        _, holdout_index = split_holdout(
            len(train), config.holdout_fraction, config.min_holdout, seed
        )
        stem = args.runs_dir / f"terms-s{seed}"
        holdout = cached_terms(
            detector, [train[i] for i in holdout_index], Path(f"{stem}-holdout.npz")
        )
        for key, (images, masks, kinds) in sets.items():
            terms = cached_terms(detector, images, Path(f"{stem}-{key}.npz"))
            truth = resized_masks(masks, config.image_size)
            for rule in args.rules:
                for spread in args.spreads:
                    scores, maps = apply_rule(rule, holdout, terms, spread)
                    title = rule if args.spreads == ["q99"] else f"{rule} {spread}"
                    report(f"s{seed} {key} {title}", scores, maps, truth, np.array(kinds))
                    if key == "dev" and rule == "mean":
                        if len(args.spreads) > 1:
                            _, weight, _, g_weight = term_scaling(rule, holdout, spread)
                            print(f"  weights: memory {weight:.4f}, Gaussian {g_weight:.4f}")
                        print_highest_good(scores, np.array(kinds), names)
                        if args.term_ranks is not None:
                            print_term_ranks(
                                holdout, terms, np.array(kinds), names, args.term_ranks
                            )


if __name__ == "__main__":
    main()
