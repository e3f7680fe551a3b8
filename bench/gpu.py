"""GPU figures for one CUDA device: model images/s per precision and runtime, JPEG decode.

Prints the device, then images/s of the full detector (EfficientNet-Lite0 at 256 px:
backbone, folded head, memory bank, image score with the Gaussian term, heatmap) on a batch
already on the device, at batch 1/8/32/64, for eager PyTorch in float32 and with
bfloat16/float16 autocast, and for ONNX
Runtime's CUDA and TensorRT providers when the installed onnxruntime has them (those
include the host-to-device copy of the batch); then frames/s of decoding 256 px JPEG
frames on the GPU (``torchvision.io.decode_jpeg`` on the device) and on the CPU (OpenCV,
as the worker does). Exits with "no CUDA device" when there is none.

    python bench/gpu.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BATCHES = (1, 8, 32, 64)
SIZE = 256


def rate(call: Callable[[], object], batch: int, repeats: int) -> float:
    """Images/s: median over ``repeats`` synchronised calls after two warm-ups."""
    for _ in range(2):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def torch_rows(detector, repeats: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    modes: list[tuple[str, torch.dtype | None]] = [("torch fp32", None),
                                                    ("torch fp16 autocast", torch.float16)]
    if torch.cuda.is_bf16_supported():
        modes.insert(1, ("torch bf16 autocast", torch.bfloat16))
    for name, dtype in modes:
        rows[name] = []
        for batch in BATCHES:
            images = torch.randn(batch, 3, SIZE, SIZE, device="cuda")

            def call(images=images, dtype=dtype):
                # the detector's own path: its memory bank and Gaussian term run in float32
                with torch.inference_mode():
                    maps, scores = detector.score(images, cuda_dtype=dtype or torch.float32)
                    return scores, detector.heatmaps(maps)

            rows[name].append(rate(call, batch, repeats))
    return rows


def ort_rows(cpu_detector, repeats: int) -> dict[str, list[float]]:
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: no ONNX Runtime rows")
        return {}
    available = onnxruntime.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in available]
    if not wanted:
        print(f"onnxruntime has no CUDA/TensorRT provider ({available}); install "
              "onnxruntime-gpu for those rows")
        return {}
    from model.artifact import save_artifact
    from model.export import export_detector

    work = Path(tempfile.mkdtemp(prefix="lw-gpu-"))
    artifact = save_artifact(cpu_detector, work / "bench.safetensors")
    export_detector(artifact, work / "onnx", "onnx")
    rows: dict[str, list[float]] = {}
    for provider in wanted:
        try:
            session = onnxruntime.InferenceSession(str(work / "onnx" / "model.onnx"),
                                                   providers=[provider, "CPUExecutionProvider"])
        except Exception as error:  # a provider whose libraries are missing
            print(f"{provider}: cannot start ({error})")
            continue
        name = f"onnxruntime {provider.removesuffix('ExecutionProvider')}"
        rows[name] = []
        for batch in BATCHES:
            images = np.random.default_rng(0).standard_normal(
                (batch, 3, SIZE, SIZE)).astype(np.float32)
            rows[name].append(rate(lambda s=session, x=images: s.run(None, {"images": x}),
                                   batch, repeats))
    return rows


def decode_rows(repeats: int) -> None:
    import cv2
    from torchvision.io import decode_jpeg

    from devtools.synthetic import frame_sequence
    from pipeline.wire.codec import encode_image
    from pipeline.wire.messages import Encoding

    payloads = [encode_image(f.image, Encoding.JPEG, 90)
                for f in frame_sequence(64, SIZE, defect_every=5, seed=3)]
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]

    def gpu():
        return decode_jpeg(tensors, device="cuda")

    def cpu():
        return [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in payloads]

    print(f"\nJPEG decode, {SIZE} px frames, batches of 64, frames/s:")
    print(f"  GPU (torchvision.io.decode_jpeg on the device): {rate(gpu, 64, repeats):9.1f}")
    print(f"  CPU (cv2.imdecode, one thread, as the worker) : {rate(cpu, 64, repeats):9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    from speed import lite0_detector

    print(f"device: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA "
          f"{torch.version.cuda})")
    cpu_detector = lite0_detector()
    rows = ort_rows(cpu_detector, args.repeats)
    detector = lite0_detector().to("cuda")
    rows = {**torch_rows(detector, args.repeats), **rows}
    print(f"\nfull detector, {SIZE} px, images/s (higher is better), median of {args.repeats}")
    print(f"{'runtime':<28}" + "".join(f"{'batch ' + str(b):>11}" for b in BATCHES))
    for name, values in rows.items():
        print(f"{name:<28}" + "".join(f"{v:>11.1f}" for v in values))
    decode_rows(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
