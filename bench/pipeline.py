"""End-to-end throughput and latency of the pipeline vs the bare model.

One run, side by side:

1. bare model: ``predict`` on decoded frames at the worker's batch size, in the same
   runtime and on the same device as the worker (``--runtime``, ``--device``);
2. end to end: a producer pushes pre-encoded JPEG frames (as a camera would hand them
   over) through Kafka (tansu) to an inference worker process, which stores results and
   heatmaps in Redis; throughput is measured on the worker's stored timestamps;
3. latency: capture timestamp -> Redis write, p50/p99, at a steady offered load of half
   the measured end-to-end capacity;
4. the worker's batch-size histogram (from its /metrics endpoint).

With ``--baseline`` the same stack also runs a worker with today's settings (eager
PyTorch, batch 8) right after, and the speed-up of the chosen runtime's end to end over it
is printed.

Bars: end-to-end / bare >= 0.85 in the same runtime; end to end >= 2.5x the eager,
batch-8 end to end, on CPU with EfficientNet-Lite0 at 256 px.
Usage: ``python bench/pipeline.py [--runtime openvino] [--device cpu] [--batch B]
[--baseline] [--size 256] [--frames 240]``
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.local_stack import LocalStack, free_port  # noqa: E402
from devtools.synthetic import frame_sequence, good_frames  # noqa: E402
from model.trainer import FitConfig, fit_detector  # noqa: E402
from pipeline.kafka.producer import KafkaRecordSink  # noqa: E402
from pipeline.model_store import publish_model  # noqa: E402
from pipeline.redis.results import RedisResultReader  # noqa: E402
from pipeline.runtimes import RUNTIMES, load_model  # noqa: E402
from pipeline.settings import KafkaSettings  # noqa: E402
from pipeline.wire.codec import encode_image  # noqa: E402
from pipeline.wire.layout import RedisKeys  # noqa: E402
from pipeline.wire.messages import Encoding, FrameMessage  # noqa: E402
from workers.inference.settings import BatchingSettings  # noqa: E402

LINE = "bench-line"


def bare_fps(detector, images, batch: int, seconds: float = 8.0) -> float:
    detector.predict(images[:batch])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done // batch * batch) % (len(images) - batch)
        detector.predict(images[start:start + batch])
        done += batch
    return done / (time.perf_counter() - started)


def send(sink: KafkaRecordSink, topic: str, payloads, camera: str, rate: float | None,
         tag: str) -> int:
    interval = 1.0 / rate if rate else 0.0
    next_due = time.monotonic()
    for i, payload in enumerate(payloads):
        if interval:
            delay = next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_due += interval
        size = int(os.environ.get("BENCH_SIZE", "256"))
        frame = FrameMessage(camera, LINE, f"{tag}-{i:06d}", time.time(), Encoding.JPEG,
                             size, size, payload)
        sink.send(topic, frame.key, frame.payload, frame.headers())
    sink.flush(30)
    return len(payloads)


def wait_results(reader: RedisResultReader, count: int, timeout: float = 300.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and reader.stream_length(LINE) < count:
        time.sleep(0.1)
    return reader.results(LINE)


def end_to_end(stack, work: Path, payloads: list[bytes], runtime: str, device: str,
               batch: int, threads: int, latency_seconds: float) -> dict:
    """One worker process on the stack: capacity, latency at half of it, its metrics."""
    port = free_port()
    prefix = f"bench{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap,
           "LINEWATCH_KAFKA__ENABLE_IDEMPOTENCE": "false",
           "LINEWATCH_REDIS__URL": stack.redis_url, "LINEWATCH_REDIS__KEY_PREFIX": prefix,
           "LINEWATCH_MODEL_STORE": str(work / "models"), "LINEWATCH_GROUP_ID": prefix,
           "LINEWATCH_RUNTIME": runtime, "LINEWATCH_DEVICE": device,
           "LINEWATCH_RUNTIME_THREADS": str(threads),
           "LINEWATCH_RUNTIME_CACHE": str(work / "runtime-cache"),
           "LINEWATCH_BATCHING__MAX_BATCH_SIZE": str(batch),
           "LINEWATCH_BATCHING__MAX_WAIT_MS": "20",
           "LINEWATCH_HTTP__PORT": str(port), "LINEWATCH_FETCH_MAX_WAIT_MS": "20",
           "LINEWATCH_MAX_POLL_INTERVAL_MS": "20000", "LINEWATCH_SESSION_TIMEOUT_MS": "10000",
           "LINEWATCH_HEARTBEAT_INTERVAL_MS": "500"}
    worker = subprocess.Popen([sys.executable, "-m", "workers.inference",
                               "--log-level", "WARNING"], env=env)
    try:
        reader = RedisResultReader(redis.Redis.from_url(stack.redis_url), RedisKeys(prefix))
        sink = KafkaRecordSink(KafkaSettings(bootstrap_servers=stack.bootstrap,
                                             enable_idempotence=False))
        # warm-up: join the group, load the model
        send(sink, "linewatch.frames", payloads[:batch], "cam-0", None, "warm")
        wait_results(reader, batch)
        # capacity: push everything at once
        threading.Thread(target=send, args=(sink, "linewatch.frames", payloads, "cam-0",
                                            None, "cap")).start()
        cap = [r for r in wait_results(reader, batch + len(payloads))
               if r.frame_id.startswith("cap")]
        stored = sorted(r.stored_ts for r in cap)
        first_capture = min(r.capture_ts for r in cap)
        e2e = len(cap) / (stored[-1] - first_capture)  # includes the first batch's wait
        # latency at half capacity
        rate = e2e / 2
        count = int(rate * latency_seconds)
        send(sink, "linewatch.frames", (payloads * 10)[:count], "cam-1", rate, "lat")
        lat = [r for r in wait_results(reader, batch + len(payloads) + count)
               if r.frame_id.startswith("lat")]
        latencies = np.array([r.stored_ts - r.capture_ts for r in lat]) * 1000
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        sink.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    return {"e2e": e2e, "frames": len(cap), "rate": rate, "latencies": latencies,
            "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=None,
                        help="frames per model call (default: the worker's for the device)")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime/openvino threads (0: the runtime's choice)")
    parser.add_argument("--baseline", action="store_true",
                        help="also run today's settings (torch, batch 8) and print the ratio")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=960,
                        help="frames of the capacity run (240 frames at ~65 frames/s last "
                        "under 4 s, and the first batch's wait then costs several percent)")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device")
    batch = args.batch or BatchingSettings().batch_size(args.device)
    os.environ["BENCH_SIZE"] = str(args.size)
    work = Path(tempfile.mkdtemp(prefix="lw-bench-"))
    print(f"fitting a Lite0 model at {args.size}px (speed does not depend on fit quality; "
          "50 frames, so that 10 are held out and the fit keeps its memory bank and Gaussian "
          "term, which cost inference time)")
    detector = fit_detector(good_frames(50, args.size), product_line=LINE,
                            config=FitConfig(image_size=args.size, epochs=1,
                                             batch_size=8))
    artifact = publish_model(work / "models", detector)
    model = load_model(artifact, args.runtime, args.device, line=LINE,
                       cache_dir=work / "runtime-cache", threads=args.threads)
    frames = frame_sequence(args.frames, args.size, defect_every=5, seed=3)
    images = [f.image for f in frames]
    payloads = [encode_image(img, Encoding.JPEG, 90) for img in images]
    # measured before and after the end-to-end run (the machine's load drifts)
    bare_before = bare_fps(model, images, batch)
    with LocalStack(kafka_port=free_port(), topics={"linewatch.frames": 4,
                                                    "linewatch.frames.dlq": 1}) as stack:
        run = end_to_end(stack, work, payloads, args.runtime, args.device, batch,
                         args.threads, args.latency_seconds)
        bare_after = bare_fps(model, images, batch)
        baseline = None
        if args.baseline:
            baseline = end_to_end(stack, work, payloads, "torch", args.device, 8, 0,
                                  args.latency_seconds)
    bare = (bare_before + bare_after) / 2
    e2e, latencies, metrics = run["e2e"], run["latencies"], run["metrics"]
    load = os.getloadavg()
    print(f"\n=== pipeline bench: efficientnet_lite0, {args.size}px, runtime {args.runtime} "
          f"on {args.device}, batch {batch}, CPU threads {os.cpu_count()}, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ===")
    print(f"bare model ({args.runtime:>11}): {bare:7.1f} frames/s  (before {bare_before:.1f}, "
          f"after {bare_after:.1f})")
    print(f"end to end (capacity)   : {e2e:7.1f} frames/s  ({run['frames']} frames, producer "
          f"-> Kafka -> worker -> Redis)")
    print(f"ratio                   : {e2e / bare:7.3f}   (bar >= 0.85)")
    if baseline is not None:
        print(f"today's end to end      : {baseline['e2e']:7.1f} frames/s  (torch, batch 8, "
              f"same stack, right after)")
        print(f"speed-up over today     : {e2e / baseline['e2e']:7.2f}   (bar >= 2.5)")
    print(f"latency at {run['rate']:.1f} frames/s offered ({len(latencies)} frames): "
          f"p50 {np.percentile(latencies, 50):.0f} ms, p99 {np.percentile(latencies, 99):.0f} ms")
    print("batch-size histogram (frames per model call, cumulative buckets):")
    for line in metrics.splitlines():
        if line.startswith("linewatch_worker_batch_size_bucket") or line.startswith(
                "linewatch_worker_batch_size_count"):
            print("  " + line)
    print("worker-side model time (all batches, incl. the latency phase):")
    for line in metrics.splitlines():
        if line.startswith(("linewatch_worker_inference_seconds_sum",
                            "linewatch_worker_inference_seconds_count")):
            print("  " + line)


if __name__ == "__main__":
    main()
