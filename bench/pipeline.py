"""End-to-end throughput and latency of the pipeline vs the bare model.

One run, side by side:

1. bare model: ``detector.predict`` on decoded frames at the worker's batch size;
2. end to end: a producer pushes pre-encoded JPEG frames (as a camera would hand them
   over) through Kafka (tansu) to an inference worker process, which stores results and
   heatmaps in Redis; throughput is measured on the worker's stored timestamps;
3. latency: capture timestamp -> Redis write, p50/p99, at a steady offered load of half
   the measured end-to-end capacity;
4. the worker's batch-size histogram (from its /metrics endpoint).

Bar: end-to-end / bare >= 0.85 on CPU with EfficientNet-Lite0 at 256 px.
Usage: ``python bench/pipeline.py [--size 256] [--batch 8] [--frames 240]``
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
from pipeline.settings import KafkaSettings  # noqa: E402
from pipeline.wire.codec import encode_image  # noqa: E402
from pipeline.wire.layout import RedisKeys  # noqa: E402
from pipeline.wire.messages import Encoding, FrameMessage  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    args = parser.parse_args()
    os.environ["BENCH_SIZE"] = str(args.size)
    work = Path(tempfile.mkdtemp(prefix="lw-bench-"))
    print(f"fitting a Lite0 model at {args.size}px (speed does not depend on fit quality)")
    detector = fit_detector(good_frames(16, args.size), product_line=LINE,
                            config=FitConfig(image_size=args.size, epochs=1, batch_size=8))
    publish_model(work / "models", detector)
    frames = frame_sequence(args.frames, args.size, defect_every=5, seed=3)
    images = [f.image for f in frames]
    payloads = [encode_image(img, Encoding.JPEG, 90) for img in images]
    # measured before and after the end-to-end run (the machine's load drifts)
    bare_before = bare_fps(detector, images, args.batch)
    prefix = f"bench{int(time.time())}"
    with LocalStack(kafka_port=free_port(), topics={"linewatch.frames": 4,
                                                    "linewatch.frames.dlq": 1}) as stack:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap,
               "LINEWATCH_KAFKA__ENABLE_IDEMPOTENCE": "false",
               "LINEWATCH_REDIS__URL": stack.redis_url, "LINEWATCH_REDIS__KEY_PREFIX": prefix,
               "LINEWATCH_MODEL_STORE": str(work / "models"),
               "LINEWATCH_BATCHING__MAX_BATCH_SIZE": str(args.batch),
               "LINEWATCH_BATCHING__MAX_WAIT_MS": "20",
               "LINEWATCH_HTTP__PORT": str(port), "LINEWATCH_FETCH_MAX_WAIT_MS": "20",
               "LINEWATCH_MAX_POLL_INTERVAL_MS": "20000", "LINEWATCH_SESSION_TIMEOUT_MS": "10000",
               "LINEWATCH_HEARTBEAT_INTERVAL_MS": "500"}
        worker = subprocess.Popen([sys.executable, "-m", "workers.inference",
                                   "--log-level", "WARNING"], env=env)
        try:
            reader = RedisResultReader(redis.Redis.from_url(stack.redis_url),
                                       RedisKeys(prefix))
            sink = KafkaRecordSink(KafkaSettings(bootstrap_servers=stack.bootstrap,
                                                 enable_idempotence=False))
            # warm-up: join the group, load the model
            send(sink, "linewatch.frames", payloads[: args.batch], "cam-0", None, "warm")
            wait_results(reader, args.batch)
            # capacity: push everything at once
            threading.Thread(target=send, args=(sink, "linewatch.frames", payloads, "cam-0",
                                                None, "cap")).start()
            cap = [r for r in wait_results(reader, args.batch + len(payloads))
                   if r.frame_id.startswith("cap")]
            stored = sorted(r.stored_ts for r in cap)
            first_capture = min(r.capture_ts for r in cap)
            e2e = len(cap) / (stored[-1] - first_capture)  # includes the first batch's wait
            # latency at half capacity
            rate = e2e / 2
            count = int(rate * args.latency_seconds)
            send(sink, "linewatch.frames", (payloads * 10)[:count], "cam-1", rate, "lat")
            lat = [r for r in wait_results(reader, args.batch + len(payloads) + count)
                   if r.frame_id.startswith("lat")]
            latencies = np.array([r.stored_ts - r.capture_ts for r in lat]) * 1000
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            sink.close()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    bare_after = bare_fps(detector, images, args.batch)
    bare = (bare_before + bare_after) / 2
    print(f"\n=== pipeline bench: efficientnet_lite0, {args.size}px, batch {args.batch}, "
          f"CPU threads {os.cpu_count()} ===")
    print(f"bare model           : {bare:7.1f} frames/s  (before {bare_before:.1f}, "
          f"after {bare_after:.1f})")
    print(f"end to end (capacity): {e2e:7.1f} frames/s  ({len(cap)} frames, producer -> "
          f"Kafka -> worker -> Redis)")
    print(f"ratio                : {e2e / bare:7.3f}   (bar >= 0.85)")
    print(f"latency at {rate:.1f} frames/s offered ({len(lat)} frames): "
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
