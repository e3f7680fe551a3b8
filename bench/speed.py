"""Images/s of the full detector per inference runtime and batch size, side by side.

One run on the CPU, 256 px, the project's EfficientNet-Lite0 detector (ImageNet trunk,
random head weights, a random memory bank of the default size and a random global Gaussian:
speed does not depend on the values) saved as an artifact and loaded the way the worker loads
it: eager PyTorch (``torch``), ONNX Runtime and OpenVINO (exported on load). "Full" is what
a worker's model call does with a batch of decoded 256 px frames: normalise, backbone,
folded head, memory bank distances, image score (max + Gaussian term), upsampled and blurred
heatmap, calibration, each at both input scales (256 px and the second scale, 192 px).
Rows ending in ``-bare`` are the same detector without the memory bank and the Gaussian term
(SimpleNet alone), rows ending in ``-1scale`` the full detector at 256 px only, rows ending in
``-zeros`` the full detector with the zeros outside the map counted in every layer's
neighbourhood mean (``in_map_layers`` 0, SimpleNet's pooling), for their cost. Each repeat
times one batch of every runtime back to back, so drift in the machine's load hits all
alike; the median of the repeats is reported.

    python bench/speed.py [--repeats 12] [--threads 2] [--batches 1 2 4 8] [--no-bf16]

A row ``openvino-bf16`` shows OpenVINO with bfloat16 inference (opt-in in the worker:
scores move by about 1 %); it is left out of the last line, which names the fastest
float32 runtime (equal to eager within 1e-4) and batch and its speed-up over eager
PyTorch at eager's own best batch size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# as the worker sets it (workers/inference/main.py): eager PyTorch at its best on busy cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from model.artifact import save_artifact  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.detector import AnomalyDetector  # noqa: E402
from model.features import DEFAULT_COMMON_DIM, default_embed_dim  # noqa: E402
from model.global_gaussian import GlobalGaussian  # noqa: E402
from model.metadata import (  # noqa: E402
    Calibration,
    DetectorMetadata,
    GlobalGaussianTerm,
    PatchMemoryTerm,
)
from model.network import HeadEnsemble  # noqa: E402
from model.patch_memory import PatchMemory  # noqa: E402
from model.trainer import FitConfig  # noqa: E402
from pipeline.runtimes import RUNTIMES, load_model  # noqa: E402

SIZE = 256
BACKBONE = "efficientnet_lite0"
FIT_DEFAULTS = FitConfig()  # the default ensemble size, width and margin


def lite0_detector(
    size: int = SIZE,
    extras: bool = True,
    second_scale: bool = True,
    in_map_layers: int = FIT_DEFAULTS.in_map_layers,
) -> AnomalyDetector:
    """The default Lite0 detector (ImageNet trunk, random heads) at ``size`` px.

    ``extras``: with a random memory bank of the default size and a random global Gaussian.
    ``second_scale``: also scoring the default second input scale. ``in_map_layers``: the
    finest layers pooled over in-map cells only at the border.
    """
    torch.manual_seed(0)
    backbone = build_backbone(BACKBONE)
    common = DEFAULT_COMMON_DIM[BACKBONE]
    embed = default_embed_dim(BACKBONE, backbone.spec.channels, common)
    metadata = DetectorMetadata(
        version="20260101T000000Z-bench", product_line="bench", backbone=BACKBONE,
        layers=backbone.spec.layers, image_size=size, common_dim=common, embed_dim=embed,
        hidden_dim=FIT_DEFAULTS.hidden_dim, heads=FIT_DEFAULTS.heads,
        margin=FIT_DEFAULTS.margin, noise_sigma=0.015, feature_scale=1.0, epochs=1,
        calibration=Calibration(0.0, 1.0, 0.01, 0.01), calibration_scores=(),
        train_image_count=0, holdout_image_count=0, train_fingerprint="", created_at="",
        code_version="bench", input_standardisation=FIT_DEFAULTS.input_standardisation,
        second_image_size=(
            round(size * FIT_DEFAULTS.second_scale) if second_scale else None),
        in_map_layers=in_map_layers)
    head = HeadEnsemble.empty(FIT_DEFAULTS.heads, embed, FIT_DEFAULTS.hidden_dim,
                              -FIT_DEFAULTS.margin).eval()
    if not extras:
        return AnomalyDetector(backbone=backbone, head=head, metadata=metadata)
    dims, size_bank = sum(backbone.spec.channels), FIT_DEFAULTS.memory_bank_size
    gaussian = GlobalGaussian(torch.randn(dims), torch.tril(torch.randn(dims, dims)) * 0.05,
                              center=1.0, weight=0.1)
    memory = PatchMemory(torch.randn(size_bank, embed), center=1.0, weight=0.1)
    metadata = replace(
        metadata,
        global_gaussian=GlobalGaussianTerm(center=1.0, weight=0.1, shrinkage=0.1, dims=dims),
        patch_memory=PatchMemoryTerm(center=1.0, weight=0.1, size=size_bank, dims=embed))
    return AnomalyDetector(backbone=backbone, head=head, metadata=metadata,
                           global_gaussian=gaussian, patch_memory=memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--no-bf16", action="store_true", help="skip the openvino-bf16 row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lw-speed-"))
    artifact = save_artifact(lite0_detector(), work / "bench.safetensors")
    detectors = {name: load_model(artifact, name, "cpu", cache_dir=work / "cache",
                                  threads=args.threads) for name in args.runtimes}
    variants = {
        "bare": save_artifact(lite0_detector(extras=False), work / "bare.safetensors"),
        "1scale": save_artifact(lite0_detector(second_scale=False), work / "one.safetensors"),
        "zeros": save_artifact(lite0_detector(in_map_layers=0), work / "zeros.safetensors"),
    }
    for suffix, path in variants.items():
        for name in ("torch", "openvino"):
            if name in args.runtimes:
                detectors[f"{name}-{suffix}"] = load_model(
                    path, name, "cpu", cache_dir=work / "cache", threads=args.threads)
    if "openvino" in args.runtimes and not args.no_bf16:
        detectors["openvino-bf16"] = load_model(artifact, "openvino", "cpu",
                                                cache_dir=work / "cache", threads=args.threads,
                                                precision="bf16")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(8)]
    rates: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        images = (frames * (batch // len(frames) + 1))[:batch]
        times: dict[str, list[float]] = {name: [] for name in detectors}
        for detector in detectors.values():
            detector.predict(images)
            detector.predict(images)
        for _ in range(args.repeats):
            for name, detector in detectors.items():
                started = time.perf_counter()
                detector.predict(images)
                times[name].append(time.perf_counter() - started)
        for name in detectors:
            rates[name, batch] = batch / statistics.median(times[name])
    load = os.getloadavg()
    print(f"full detector ({BACKBONE}, {SIZE}x{SIZE} px, decoded uint8 frames -> scores + "
          f"heatmaps), CPU, {args.threads} threads, images/s (higher is better), median of "
          f"{args.repeats}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    header = f"{'runtime':<14}" + "".join(f"{'batch ' + str(b):>10}" for b in args.batches)
    print(header)
    for name in detectors:
        print(f"{name:<14}" + "".join(f"{rates[name, b]:>10.1f}" for b in args.batches))
    labels = {"bare": "with memory bank and Gaussian term / SimpleNet alone",
              "1scale": "at 256 + 192 px / at 256 px only",
              "zeros": "in-map border mean on the finest layer / zeros counted everywhere"}
    for suffix, label in labels.items():
        for name in ("torch", "openvino"):
            if f"{name}-{suffix}" in detectors:
                ratio = max(rates[name, b] for b in args.batches) / max(
                    rates[f"{name}-{suffix}", b] for b in args.batches)
                print(f"{name}: {label}, best batch each: {ratio:.2f}")
    exact = {key: value for key, value in rates.items() if key[0] in RUNTIMES}
    best_name, best_batch = max(exact, key=exact.__getitem__)
    if "torch" in detectors:
        eager = max(rates["torch", b] for b in args.batches)
        print(f"best CPU runtime: {best_name} batch {best_batch}, speedup over eager full at "
              f"its best batch: {rates[best_name, best_batch] / eager:.2f}")


if __name__ == "__main__":
    main()
