"""Response times of the operator console with a whole shop floor of seeded data.

Seeds 20 lines x 10 cameras (200 cameras, 60 results each, with alerts, one camera in
seven silent for 31 minutes, worker health records) under a fresh key prefix on a Redis,
starts the real console server, then times authenticated GETs of ``/api/overview`` and
of one line's view (``/api/lines/<line>``) and prints p50/p95/max in milliseconds. The
seeded keys are deleted afterwards. Not asserted anywhere: the figures are printed.

    python bench/console.py [--redis redis://127.0.0.1:6379/0] [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.console_seed import floor_scene, publish_health, store_frames  # noqa: E402
from pipeline.redis.results import RedisResultReader  # noqa: E402
from pipeline.settings import RedisSettings  # noqa: E402
from pipeline.wire.layout import RedisKeys  # noqa: E402
from workers.dashboard.console import Console  # noqa: E402
from workers.dashboard.server import DashboardServer  # noqa: E402
from workers.dashboard.settings import AuthSettings, DashboardSettings  # noqa: E402

TOKEN = "bench-console-token"


def _timed(url: str, requests: int) -> tuple[list[float], int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    times, size = [], 0
    for _ in range(requests):
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as reply:
            size = len(reply.read())
        times.append((time.perf_counter() - started) * 1000.0)
    return times, size


def _row(name: str, times: list[float], size: int) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"{name:<28}{statistics.median(ordered):>9.1f}{p95:>9.1f}{ordered[-1]:>9.1f}"
            f"{size / 1024:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--cameras", type=int, default=10)
    args = parser.parse_args()
    prefix = f"lwbench-console-{uuid.uuid4().hex[:8]}"
    settings = RedisSettings(url=args.redis, key_prefix=prefix)
    client = redis.Redis.from_url(args.redis)
    try:
        started = time.perf_counter()
        frames = floor_scene(lines=args.lines, cameras=args.cameras)
        store_frames(settings, frames)
        for worker in range(4):
            publish_health(client, prefix, f"worker-{worker}",
                           lines=[f"line-{i:02d}" for i in range(worker, args.lines, 4)],
                           lag=worker * 10, dead_letters={"undecodable_payload": worker})
        print(f"seeded {len(frames)} results of {args.lines * args.cameras} cameras on "
              f"{args.lines} lines in {time.perf_counter() - started:.1f} s "
              f"(prefix {prefix})")
        console = DashboardSettings(redis=settings, http={"port": 0},
                                    auth=AuthSettings(token=TOKEN))
        queries = Console(RedisResultReader(client, RedisKeys(prefix)))
        with DashboardServer(console, queries) as server:
            overview, overview_size = _timed(server.url + "/api/overview", args.requests)
            line, line_size = _timed(server.url + "/api/lines/line-03", args.requests)
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
              f"{os.getloadavg()[2]:.2f}, {args.requests} sequential requests each")
        print(f"{'route':<28}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'KiB':>10}")
        print(_row("/api/overview (200 rows)" if args.lines * args.cameras == 200
                   else "/api/overview", overview, overview_size))
        print(_row("/api/lines/line-03", line, line_size))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start:start + 5000])
        print(f"deleted {len(keys)} seeded keys")
        client.close()


if __name__ == "__main__":
    main()
