"""Every long-running process a deploy file names starts and answers ``/healthz``.

The entry points and their environments come from every Dockerfile, compose service and
Kubernetes workload (tests/unit/deploy/entry_points.py), with no allow-list. Only what
points outside this machine is changed: Kafka and Redis addresses go to a local stack
(PLAINTEXT: SASL settings are dropped), the model store to an empty folder, the key prefix
to one of this test, and the HTTP port to a free loopback one. The lite image's processes
run with torch made unimportable, as in that image. The topics job runs to completion
against an empty broker and must create the topics it is configured for.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient

from devtools.local_stack import LocalStack, free_port
from tests.unit.deploy.deploy_files import ROOT, dockerfiles
from tests.unit.deploy.entry_points import EntryPoint, entry_points, has_model
from tests.unit.deploy.test_entry_points import _RUN, MODEL_PACKAGES

pytestmark = pytest.mark.integration

ENTRY_POINTS = entry_points()
LONG_RUNNING = [e for e in ENTRY_POINTS if e.long_running and e.env is not None]
JOBS = [e for e in ENTRY_POINTS if e.process == "topics" and e.env is not None]
HEALTH_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(kafka_port=free_port(), topics={"linewatch.frames": 4,
                                                    "linewatch.frames.dlq": 1}) as local:
        yield local


def local_environment(entry: EntryPoint, stack: LocalStack, prefix: str, store: Path,
                      port: int) -> dict[str, str]:
    """The deploy file's environment, pointed at this machine."""
    assert entry.env is not None
    env = {k: v for k, v in entry.env.items()
           if not k.startswith(("LINEWATCH_KAFKA__SASL_", "LINEWATCH_KAFKA__SSL_"))
           and k != "LINEWATCH_KAFKA__SECURITY_PROTOCOL"}
    env["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"] = stack.bootstrap
    env["LINEWATCH_HTTP__HOST"] = "127.0.0.1"
    env["LINEWATCH_HTTP__PORT"] = str(port)
    if "LINEWATCH_REDIS__URL" in env:
        env["LINEWATCH_REDIS__URL"] = stack.redis_url
        env["LINEWATCH_REDIS__KEY_PREFIX"] = prefix
    if "LINEWATCH_MODEL_STORE" in env:
        env["LINEWATCH_MODEL_STORE"] = str(store)
    return env


def start(entry: EntryPoint, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    blocked = () if has_model(dockerfiles()[entry.image]) else MODEL_PACKAGES
    return subprocess.Popen(
        [sys.executable, "-c", _RUN, ",".join(blocked), entry.module, *entry.args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def run_until_healthy(entry: EntryPoint, stack: LocalStack, prefix: str,
                      tmp_path: Path) -> str | None:
    """Start, wait for /healthz 200, SIGTERM, expect exit 0; the failure, or None."""
    port = free_port()
    folder = tmp_path / uuid.uuid4().hex[:8]
    (folder / "models").mkdir(parents=True)
    process = start(entry, local_environment(entry, stack, prefix, folder / "models", port),
                    folder)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    status = None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            status = healthz(port)
            if status == 200:
                break
            time.sleep(0.3)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    if status != 200 or process.returncode != 0:
        return (f"{entry.where}: python -m {entry.module} -> /healthz {status}, exit "
                f"{process.returncode}\n{output[-2000:]}")
    return None


def test_every_long_running_entry_point_answers_healthz(stack, tmp_path) -> None:
    prefix = f"lwdeploy-{uuid.uuid4().hex[:8]}"
    assert {e.process for e in LONG_RUNNING} >= {"worker", "producer", "drift-monitor",
                                                 "dashboard"}
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            failures = [f for f in pool.map(
                lambda e: run_until_healthy(e, stack, prefix, tmp_path), LONG_RUNNING) if f]
    finally:
        client = redis.Redis.from_url(stack.redis_url)
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    print(f"\n{len(LONG_RUNNING)} long-running entry points started, "
          f"{len(LONG_RUNNING) - len(failures)} answered /healthz and stopped on SIGTERM")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("entry", JOBS, ids=lambda e: e.where)
def test_the_topics_job_creates_what_it_is_configured_for(entry: EntryPoint, tmp_path) -> None:
    with LocalStack(kafka_port=free_port(), topics={}) as empty:
        env = local_environment(entry, empty, "unused", tmp_path, free_port())
        done = start(entry, env, tmp_path)
        output, _ = done.communicate(timeout=180)
        assert done.returncode == 0, output[-3000:]
        admin = KafkaAdminClient(bootstrap_servers=empty.bootstrap)
        try:
            described = {t.get("name") or t["topic"]: len(t["partitions"])
                         for t in admin.describe_topics()}
        finally:
            admin.close()
    frames = env.get("LINEWATCH_KAFKA__FRAMES_TOPIC", "linewatch.frames")
    dead_letters = env.get("LINEWATCH_KAFKA__DEAD_LETTER_TOPIC", "linewatch.frames.dlq")
    assert described[frames] == int(env["LINEWATCH_FRAMES_PARTITIONS"])
    assert described[dead_letters] == int(env["LINEWATCH_DEAD_LETTER_PARTITIONS"])
