"""Command line: ``linewatch-model fit | eval | predict`` (after anomalib's fit/test/predict).

Examples::

    linewatch-model fit --data ../shared/data/mtd/train/good --line tiles --output tiles.safetensors
    linewatch-model eval --model tiles.safetensors --data ../shared/data/mtd --overlays runs/eval
    linewatch-model predict --model tiles.safetensors --output runs/predict img1.jpg img2.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png
from tqdm import tqdm

from model.artifact import load_artifact, save_artifact
from model.data import list_images, list_test_samples, read_image, read_images
from model.detector import heatmap_to_uint8
from model.errors import ModelError
from model.evaluation import colorize, evaluate
from model.trainer import FitConfig, fit_detector

logger = logging.getLogger(__name__)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fit", help="fit a detector on a folder of good images")
    parser.add_argument("--data", required=True, type=Path, help="folder of good images")
    parser.add_argument("--line", required=True, help="product line the model is for")
    parser.add_argument("--output", required=True, type=Path, help="artifact file to write")
    defaults = FitConfig()
    parser.add_argument("--backbone", default=defaults.backbone)
    parser.add_argument("--backbone-weights", default=None, help="explicit backbone weights file")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="per head")
    parser.add_argument("--heads", type=int, default=defaults.heads, help="ensemble size")
    parser.add_argument(
        "--hidden-dim", type=int, default=defaults.hidden_dim, help="discriminator width per head"
    )
    parser.add_argument("--noise-sigma", type=float, default=None)
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--holdout-fraction", type=float, default=defaults.holdout_fraction)
    parser.add_argument("--threshold-quantile", type=float, default=defaults.threshold_quantile)
    parser.add_argument("--max-images", type=int, default=None, help="use at most N images")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _run_fit(args: argparse.Namespace) -> int:
    paths = list_images(args.data)[: args.max_images]
    images = read_images(paths)
    config = FitConfig(
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        image_size=args.image_size,
        epochs=args.epochs,
        heads=args.heads,
        hidden_dim=args.hidden_dim,
        noise_sigma=args.noise_sigma,
        embed_dim=args.embed_dim,
        holdout_fraction=args.holdout_fraction,
        threshold_quantile=args.threshold_quantile,
        seed=args.seed,
        device=args.device,
    )
    started = time.perf_counter()
    with tqdm(total=config.heads * config.epochs, desc="fit", unit="epoch") as bar:

        def progress(epoch: int, epochs: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)

        detector = fit_detector(images, config=config, product_line=args.line, progress=progress)
    save_artifact(detector, args.output)
    meta = detector.metadata
    print(f"model {meta.version} for line {meta.product_line!r} -> {args.output}")
    print(
        f"images: {meta.train_image_count} train + {meta.holdout_image_count} held out; "
        f"threshold {meta.calibration.threshold:.4f} (q={meta.calibration.quantile}); "
        f"fit {time.perf_counter() - started:.1f}s"
    )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate an artifact on an MVTec-layout folder")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="folder with test/, ground_truth/")
    parser.add_argument("--overlays", type=Path, default=None, help="folder for overlay PNGs")
    parser.add_argument("--overlay-count", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None, help="also write metrics as JSON")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _run_eval(args: argparse.Namespace) -> int:
    detector = load_artifact(args.model, device=args.device)
    samples = list_test_samples(args.data)
    report = evaluate(
        detector, samples, overlay_dir=args.overlays, overlay_count=args.overlay_count
    )
    print(f"model {detector.metadata.version} on {args.data} ({report.image_count} images)")
    print(report.table())
    if args.overlays is not None:
        print(f"overlays in {args.overlays}")
    if args.json is not None:
        args.json.write_text(json.dumps(report.__dict__, indent=2))
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="score image files and write heatmap PNGs")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("images", nargs="+", type=Path)


def _run_predict(args: argparse.Namespace) -> int:
    detector = load_artifact(args.model, device=args.device)
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"{'image':<40} {'score':>8} {'normalised':>10}  label      heatmap")
    for start in range(0, len(args.images), 16):
        paths = args.images[start : start + 16]
        prediction = detector.predict([read_image(path) for path in paths])
        for index, path in enumerate(paths):
            heatmap = prediction.heatmaps[index]
            gray = torch.from_numpy(heatmap_to_uint8(heatmap))[None]
            heatmap_path = args.output / f"{path.stem}_heatmap.png"
            write_png(gray, str(heatmap_path))
            color = torch.from_numpy(np.ascontiguousarray(colorize(heatmap))).permute(2, 0, 1)
            write_png(color.contiguous(), str(args.output / f"{path.stem}_heatmap_color.png"))
            label = "ANOMALOUS" if prediction.labels[index] else "good"
            print(
                f"{str(path)[-40:]:<40} {prediction.scores[index]:>8.4f} "
                f"{prediction.normalized_scores[index]:>10.4f}  {label:<9}  {heatmap_path}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``linewatch-model``."""
    parser = argparse.ArgumentParser(prog="linewatch-model", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit(sub)
    _add_eval(sub)
    _add_predict(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    runners = {"fit": _run_fit, "eval": _run_eval, "predict": _run_predict}
    try:
        return runners[args.command](args)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
