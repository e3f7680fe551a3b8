"""Square tiles along an elongated image's long side instead of squashing it (issue 12).

The MTD tiles are 0.36 to 2.6 as wide as high; the product squashes every image to the
square input, so the texture, the tile's rim and a defect are stretched by a different factor
in every image (up to 2.6x along one axis, 6x between two images). Here an image whose long
side is more than ``--max-aspect`` times its short side is cut into ``ceil(long / short)``
square tiles of side ``short``, evenly spaced along the long side (overlapping where the
ratio is not whole); the others are squashed as now. The detector is fitted by the product
(``fit_detector``, defaults) on the training images' tiles and scores the tiles with
``AnomalyDetector.score``; an image's score is its tiles' max, its heatmap the tiles'
heatmaps (upsampled and blurred at their own size) stitched by max and resized to 256 px as
the masks. Prints ``bench/variants.py``'s line per check (the squashed default's figures are
``bench/quality.py``'s). A saved fit under ``--runs-dir`` is loaded instead of refitted.

    python bench/aspect.py [--max-aspect 1.25] [--seed 0] [--runs-dir runs/aspect]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from variants import DEFAULT_DATA, check_sets, report_heat, resized_masks

from model.artifact import load_artifact, save_artifact
from model.data import list_images, read_images
from model.detector import HEATMAP_SIGMA, AnomalyDetector, upsample_and_blur
from model.trainer import FitConfig, fit_detector

SIZE = 256


def tile_boxes(height: int, width: int, max_aspect: float) -> list[tuple[int, int, int, int]]:
    """``(top, left, bottom, right)`` of the square tiles covering an ``height x width`` image."""
    long_side, short_side = max(height, width), min(height, width)
    if long_side <= max_aspect * short_side:
        return [(0, 0, height, width)]
    count = math.ceil(long_side / short_side)
    starts = np.linspace(0, long_side - short_side, count).round().astype(int)
    if width >= height:
        return [(0, int(s), height, int(s) + short_side) for s in starts]
    return [(int(s), 0, int(s) + short_side, width) for s in starts]


def tiles_of(images: list[np.ndarray], max_aspect: float) -> tuple[list[np.ndarray], list]:
    """All tiles of all images, and each image's boxes."""
    tiles, boxes = [], []
    for image in images:
        image_boxes = tile_boxes(*image.shape[:2], max_aspect)
        boxes.append(image_boxes)
        tiles.extend(image[top:bottom, left:right] for top, left, bottom, right in image_boxes)
    return tiles, boxes


@torch.inference_mode()
def score_tiled(detector: AnomalyDetector, images: list[np.ndarray], max_aspect: float):
    """Image scores ``[N]`` and stitched heatmaps ``[N, SIZE, SIZE]`` (calibrated scale)."""
    tiles, boxes = tiles_of(images, max_aspect)
    calibration = detector.metadata.calibration
    maps, scores = [], []
    for start in range(0, len(tiles), 16):
        batch_maps, batch_scores = detector.score(detector.preprocess(tiles[start : start + 16]))
        maps.append(calibration.normalize(batch_maps.numpy()))
        scores.append(calibration.normalize(batch_scores.numpy()))
    tile_maps, tile_scores = np.concatenate(maps), np.concatenate(scores)
    image_scores, heats, index = [], [], 0
    for image, image_boxes in zip(images, boxes, strict=True):
        canvas = np.full(image.shape[:2], -np.inf, np.float32)
        for top, left, bottom, right in image_boxes:
            side = (bottom - top, right - left)
            sigma = HEATMAP_SIGMA * max(side) / SIZE
            heat = upsample_and_blur(torch.from_numpy(tile_maps[index : index + 1]), side, sigma)
            region = canvas[top:bottom, left:right]
            np.maximum(region, heat[0].numpy(), out=region)
            index += 1
        count = len(image_boxes)
        image_scores.append(tile_scores[index - count : index].max())
        resized = F.interpolate(
            torch.from_numpy(canvas)[None, None],
            size=(SIZE, SIZE),
            mode="bilinear",
            antialias=True,
        )
        heats.append(resized[0, 0].numpy())
    return np.array(image_scores), np.stack(heats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-aspect", type=float, default=1.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/aspect"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    path = args.runs_dir / f"tiled-{args.max_aspect:g}-s{args.seed}.safetensors"
    if path.exists():
        detector = load_artifact(path)
    else:
        images = read_images(list_images(args.data / "train" / "good"))
        tiles, _ = tiles_of(images, args.max_aspect)
        logging.info("%d training images -> %d tiles", len(images), len(tiles))
        started = time.perf_counter()
        detector = fit_detector(tiles, config=FitConfig(seed=args.seed), product_line="mtd")
        print(f"fit time  {time.perf_counter() - started:.1f} s  ({len(tiles)} tiles)", flush=True)
        save_artifact(detector, path)
    for key, (images, masks, kinds) in check_sets(args.data).items():
        scores, heats = score_tiled(detector, images, args.max_aspect)
        report_heat(
            f"tiled {args.max_aspect:g} s{args.seed} {key}",
            scores,
            heats,
            resized_masks(masks, SIZE),
            np.array(kinds),
        )


if __name__ == "__main__":
    main()
