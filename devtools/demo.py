"""The demo: local stack, fit a model, stream a sample video through producer + worker.

Run through ``./scripts/demo.sh`` (sets up ``.venv`` on a fresh machine first).
Everything it makes lives under ``.linewatch/demo/``; the sample video is rendered by
:mod:`devtools.synthetic` (no download). ``--data DIR`` (MVTec layout: ``train/good``
to fit on, ``test/`` to stream) uses real images instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from devtools.local_stack import LocalStack, free_port
from devtools.synthetic import SyntheticFrame, frame_sequence, good_frames, write_video
from pipeline.files import list_image_files, read_image_file
from pipeline.model_store import publish_model
from pipeline.redis.client import connect
from pipeline.redis.results import RedisResultReader
from pipeline.settings import RedisSettings
from pipeline.wire.codec import encode_image
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import Encoding
from workers.producer.sources import OpenCVReader

logger = logging.getLogger(__name__)

LINE = "demo-line"
CAMERA = "demo-cam-1"


def _load_images(folder: Path, limit: int) -> list[np.ndarray]:
    paths = list_image_files(folder, recursive=True)[:limit]
    images = [image for image in map(read_image_file, paths) if image is not None]
    if not images:
        raise SystemExit(f"no readable images under {folder}")
    return images


def _fit(args: argparse.Namespace, store: Path) -> str:
    from model.trainer import FitConfig, fit_detector

    if args.data:
        train = _load_images(Path(args.data) / "train" / "good", args.train_images)
    else:
        # the camera's path: video codec, then the producer's JPEG; train on the same
        video = write_video([SyntheticFrame(image, None) for image in
                             good_frames(args.train_images, args.size, seed=0)],
                            Path(args.workdir) / "train.avi", fps=args.fps)
        reader = OpenCVReader(str(video))
        train = []
        while (image := reader.read()) is not None:
            payload = encode_image(image, Encoding.JPEG, 90)
            train.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(payload, np.uint8), 1),
                                      cv2.COLOR_BGR2RGB))
        reader.close()
    print(f"[demo] fitting SimpleNet (efficientnet_lite0, {args.size}px, {args.epochs} epochs) "
          f"on {len(train)} good frames ...", flush=True)
    started = time.monotonic()
    detector = fit_detector(train, config=FitConfig(image_size=args.size, epochs=args.epochs),
                            product_line=LINE)
    publish_model(store, detector)
    print(f"[demo] model {detector.metadata.version} fitted in "
          f"{time.monotonic() - started:.0f}s, stored in {store}", flush=True)
    return str(detector.metadata.version)


def _source(args: argparse.Namespace, work: Path) -> tuple[str, int, dict[str, str | None]]:
    if args.data:
        test = Path(args.data) / "test"
        count = len(list_image_files(test, recursive=True))
        return str(test), min(count, args.frames), {}
    frames = frame_sequence(args.frames, args.size, defect_every=5, seed=1)
    video = write_video(frames, work / "sample.avi", fps=args.fps)
    labels = {str(i): f.defect for i, f in enumerate(frames)}
    print(f"[demo] sample video {video} ({len(frames)} frames, every 5th product defective)",
          flush=True)
    return str(video), len(frames), labels


def _env(stack: LocalStack, prefix: str, store: Path) -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap,
        "LINEWATCH_KAFKA__ENABLE_IDEMPOTENCE": "false",
        "LINEWATCH_REDIS__URL": stack.redis_url,
        "LINEWATCH_REDIS__KEY_PREFIX": prefix,
        "LINEWATCH_MODEL_STORE": str(store),
        "LINEWATCH_MAX_POLL_INTERVAL_MS": "3000",
        "LINEWATCH_SESSION_TIMEOUT_MS": "6000",
        "LINEWATCH_HEARTBEAT_INTERVAL_MS": "500",
        "LINEWATCH_FETCH_MAX_WAIT_MS": "20",
    }


def _summary(reader: RedisResultReader, started: float) -> tuple[int, int, float, float]:
    results = reader.results(LINE)
    alerts = sum(1 for r in results if r.label)
    latencies = [r.stored_ts - r.capture_ts for r in results[-50:]]
    elapsed = max(1e-6, time.monotonic() - started)
    p50 = float(np.percentile(latencies, 50)) * 1000 if latencies else 0.0
    return len(results), alerts, len(results) / elapsed, p50


def run(args: argparse.Namespace) -> int:
    """Run the demo end to end."""
    work = Path(args.workdir).resolve()
    store = work / "models"
    heatmap_dir = work / "heatmaps"
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"demo{int(time.time())}"
    with LocalStack(kafka_port=free_port(), topics={"linewatch.frames": 4,
                                                    "linewatch.frames.dlq": 1}) as stack:
        print(f"[demo] local stack: tansu at {stack.bootstrap}, Redis at {stack.redis_url}",
              flush=True)
        version = _fit(args, store)
        source, expected, labels = _source(args, work)
        env = _env(stack, prefix, store)
        worker_port, producer_port = free_port(), free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.inference", "--log-level", "WARNING"],
            env={**env, "LINEWATCH_HTTP__PORT": str(worker_port),
                 "LINEWATCH_WORKER_ID": "demo-worker-1"})
        producer = subprocess.Popen(
            [sys.executable, "-m", "workers.producer", "--log-level", "WARNING"],
            env={**env, "LINEWATCH_HTTP__PORT": str(producer_port),
                 "LINEWATCH_CAMERA_ID": CAMERA, "LINEWATCH_PRODUCT_LINE": LINE,
                 "LINEWATCH_SOURCE": source, "LINEWATCH_FPS_LIMIT": str(args.fps),
                 "LINEWATCH_MAX_FRAMES": str(expected),
                 **({"LINEWATCH_RESIZE_TO": str(args.size)} if args.data else {})})
        print(f"[demo] producer streams {expected} frames at {args.fps} fps; worker metrics at "
              f"http://127.0.0.1:{worker_port}/metrics", flush=True)
        reader = RedisResultReader(connect(RedisSettings(url=stack.redis_url)),
                                   RedisKeys(prefix))
        started = time.monotonic()
        deadline = started + args.timeout
        count = 0
        try:
            while time.monotonic() < deadline:
                time.sleep(2.0)
                count, alerts, fps, p50 = _summary(reader, started)
                print(f"[demo] {count:4d}/{expected} frames judged | {fps:5.1f} frames/s | "
                      f"{alerts:3d} anomalies | latency p50 {p50:6.0f} ms", flush=True)
                if count >= expected or worker.poll() is not None:
                    break
        finally:
            for process in (producer, worker):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in (producer, worker):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        results = reader.results(LINE)
        flagged = [r for r in results if r.label]
        for result in flagged[:10]:
            png = reader.heatmap(result.camera_id, result.frame_id)
            if png:
                (heatmap_dir / f"{result.frame_id}.png").write_bytes(png)
        summary = {"frames": len(results), "anomalies": len(flagged), "model": version}
        if labels:
            index = {r.frame_id: i for i, r in enumerate(
                sorted(results, key=lambda r: r.frame_id))}
            truth = {fid for fid, i in index.items() if labels.get(str(i))}
            hits = sum(1 for r in flagged if r.frame_id in truth)
            summary.update(defective_frames=len(truth), defective_flagged=hits,
                           good_flagged=len(flagged) - hits)
        print(f"[demo] done: {json.dumps(summary)}")
        print(f"[demo] heatmaps: Redis keys {prefix}:heatmap:{CAMERA}:<frame_id> (PNG, TTL 24h);"
              f" results stream {prefix}:results:{LINE}; alerts {prefix}:alerts:{LINE}; "
              f"PNGs of the first flagged frames in {heatmap_dir}")
        return 0 if len(results) == expected else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MVTec-layout folder of real images (train/good, test)")
    parser.add_argument("--frames", type=int, default=100, help="frames to stream")
    parser.add_argument("--fps", type=float, default=4.0, help="camera frame rate")
    parser.add_argument("--size", type=int, default=192, help="model input size")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=150)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--workdir", default=".linewatch/demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
