"""Measure one inference worker's model throughput and derive KEDA's Kafka lag threshold.

Fits a small detector on a folder of good images (one epoch: throughput does not depend on
how well the head is trained), then times ``AnomalyDetector.predict`` on batches of real
images at the worker's batch sizes. Prints a Markdown table and the lag threshold
``frames/s x target drain seconds`` (docs/scaling.md explains the derivation).

    python scripts/measure_worker_throughput.py --images /path/to/line/train/good \
        --device cuda --batch-sizes 1,8,32 --seconds 10 --drain-seconds 5
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import time
from pathlib import Path

import torch

from model.data import list_images, read_images
from model.trainer import FitConfig, fit_detector

logger = logging.getLogger(__name__)


def measure(detector: object, images: list, batch_size: int, seconds: float) -> float:
    """Run ``predict`` on batches of ``batch_size`` for about ``seconds``.

    Args:
        detector: The fitted :class:`model.detector.AnomalyDetector`.
        images: Decoded RGB images to cycle through.
        batch_size: Images per ``predict`` call.
        seconds: Measurement time (after one warm-up batch).

    Returns:
        Frames per second.
    """
    batches = [
        [images[(start + i) % len(images)] for i in range(batch_size)]
        for start in range(0, len(images), batch_size)
    ]
    detector.predict(batches[0], chunk_size=batch_size)  # warm-up
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    frames, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = batches[frames // batch_size % len(batches)]
        detector.predict(batch, chunk_size=batch_size)
        frames += batch_size
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - started)


def main() -> None:
    """Parse arguments, fit, measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of good images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fit-images", type=int, default=48)
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = read_images(list_images(args.images)[: max(args.fit_images, 64)])
    config = FitConfig(image_size=args.image_size, epochs=1, device=args.device)
    detector = fit_detector(images[: args.fit_images], config=config, product_line="bench")
    device_name = (
        torch.cuda.get_device_name(0) if detector.device.type == "cuda" else platform.processor()
    )
    print(f"device: {detector.device} ({device_name}), torch threads {torch.get_num_threads()}")
    print(f"backbone {config.backbone}, image size {args.image_size}, {len(images)} real images")
    print(f"| batch size | frames/s | lagThreshold (x {args.drain_seconds:g} s drain) |")
    print("|---:|---:|---:|")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        fps = measure(detector, images, batch_size, args.seconds)
        threshold = math.floor(fps * args.drain_seconds)
        print(f"| {batch_size} | {fps:.1f} | {threshold} |")


if __name__ == "__main__":
    main()
