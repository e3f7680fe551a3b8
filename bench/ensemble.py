"""Score-level ensembles of full default detectors on other backbones, seeds or sizes (issue 12).

Fits (or loads, when saved under ``--runs-dir``) one full default detector per
``BACKBONE:SEED[:SIZE]`` run (``SIZE``: input px, default 256), scores the development split
and the synthetic defects with the product's ``AnomalyDetector.score`` (image score = map
max + the global Gaussian term), and prints each run alone and every ensemble of two or more
of them: every run's image scores and score maps put on the published scale by its own
calibration (``0.5 * (raw - center) / (threshold - center)``: median held-out good -> 0, its
threshold -> 0.5, label-free), then averaged (maps of other grids resized bilinearly to the
finest member's first; pixel metrics at 256 px as ``bench/variants.py``, whose line format
this uses). Each run's scoring speed is timed side by side first (an ensemble's cost is the
sum of its members' per-image times).

    python bench/ensemble.py efficientnet_lite0:0 efficientnet_lite1:0 efficientnet_lite0:0:320
        [--runs-dir runs/ensemble] [--max-members K]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from variants import DEFAULT_DATA, check_sets, report, resized_masks

from model.artifact import load_artifact, save_artifact
from model.data import list_images, read_images
from model.detector import AnomalyDetector
from model.trainer import FitConfig, fit_detector

REPEATS = 10


@torch.inference_mode()
def normalised_scores(detector: AnomalyDetector, images: list[np.ndarray]) -> tuple:
    """Image scores ``[N]`` and score maps ``[N, h, w]`` on the calibrated scale."""
    calibration = detector.metadata.calibration
    maps, scores = [], []
    for start in range(0, len(images), 16):
        batch_maps, batch_scores = detector.score(detector.preprocess(images[start : start + 16]))
        maps.append(batch_maps.numpy())
        scores.append(batch_scores.numpy())
    return (
        calibration.normalize(np.concatenate(scores)),
        calibration.normalize(np.concatenate(maps)),
    )


def report_checks(title: str, detector: AnomalyDetector, data: Path) -> None:
    """Prints ``bench/variants.py``'s line for each check of one detector (calibrated scale)."""
    size = FitConfig().image_size  # masks at the default input size; maps are upsampled to it
    for key, (images, masks, kinds) in check_sets(data).items():
        scores, maps = normalised_scores(detector, images)
        report(f"{title} {key}", scores, maps, resized_masks(masks, size), np.array(kinds))


def on_one_grid(maps: list[np.ndarray]) -> list[np.ndarray]:
    """Score maps ``[N, h_i, w_i]`` resized (bilinear) to the finest member's grid."""
    grid = max((m.shape[-2:] for m in maps), key=lambda shape: shape[0] * shape[1])
    return [
        m if m.shape[-2:] == grid
        else F.interpolate(torch.from_numpy(m)[:, None], size=grid, mode="bilinear")[:, 0].numpy()
        for m in maps
    ]


def load_or_fit(
    run: str,
    runs: Path,
    data: Path,
    *,
    all_images_in_terms: bool = True,
    in_map_layers: int | None = None,
) -> AnomalyDetector:
    """The saved detector of run ``BACKBONE:SEED[:SIZE]``, fitted when absent.

    The fit uses the defaults, with input size ``SIZE`` px when given; with
    ``all_images_in_terms=False`` its memory bank and Gaussian keep the training share
    (saved under a ``-trainterms`` name); ``in_map_layers`` overrides the default's (keep
    such runs in their own ``runs`` folder).
    """
    backbone, seed, *size = run.split(":")
    sized = {"image_size": int(size[0])} if size else {}
    if in_map_layers is not None:
        sized["in_map_layers"] = in_map_layers
    config = FitConfig(
        backbone=backbone, seed=int(seed), all_images_in_terms=all_images_in_terms, **sized
    )
    suffix = (f"-{size[0]}px" if size else "") + ("" if all_images_in_terms else "-trainterms")
    path = runs / f"{backbone}-s{seed}{suffix}.safetensors"
    if path.exists():
        return load_artifact(path)
    images = read_images(list_images(data / "train" / "good"))
    started = time.perf_counter()
    detector = fit_detector(images, config=config, product_line=data.name)
    logging.info("fitted %s in %.1f s", run, time.perf_counter() - started)
    save_artifact(detector, path)
    return detector


@torch.inference_mode()
def print_speeds(detectors: dict[str, AnomalyDetector], images: list[np.ndarray]) -> None:
    """Median images/s of ``score`` per run on one batch, the runs timed back to back."""
    batches = {run: detector.preprocess(images) for run, detector in detectors.items()}
    times: dict[str, list[float]] = {run: [] for run in detectors}
    for repeat in range(REPEATS + 1):
        for run, detector in detectors.items():
            started = time.perf_counter()
            detector.score(batches[run])
            if repeat:  # the first round warms up
                times[run].append(time.perf_counter() - started)
    for run, seconds in times.items():
        print(
            f"{run}: {len(images) / statistics.median(seconds):.1f} images/s (score, eager "
            f"PyTorch, batch {len(images)}, {torch.get_num_threads()} threads, median of "
            f"{REPEATS})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="BACKBONE:SEED[:SIZE]")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ensemble"))
    parser.add_argument(
        "--max-members", type=int, default=None, help="largest ensemble printed (default: all)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    sets = check_sets(args.data)
    detectors = {run: load_or_fit(run, args.runs_dir, args.data) for run in args.runs}
    print_speeds(detectors, sets["dev"][0][:8])
    scored = {
        run: {key: normalised_scores(detector, images) for key, (images, _, _) in sets.items()}
        for run, detector in detectors.items()
    }
    size = FitConfig().image_size  # masks at the default input size; maps are upsampled to it
    for key, (_, masks, kinds) in sets.items():
        truth_masks, kinds = resized_masks(masks, size), np.array(kinds)
        for run, per_set in scored.items():
            report(f"{run} {key}", *per_set[key], truth_masks, kinds)
        for count in range(2, (args.max_members or len(scored)) + 1):
            for members in itertools.combinations(scored, count):
                scores = np.mean([scored[run][key][0] for run in members], axis=0)
                maps = np.mean(on_one_grid([scored[run][key][1] for run in members]), axis=0)
                report(f"ensemble {'+'.join(members)} {key}", scores, maps, truth_masks, kinds)


if __name__ == "__main__":
    main()
