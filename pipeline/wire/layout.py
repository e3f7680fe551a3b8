"""Where things land: every Redis key and channel, every model-store path.

Redis (prefix ``p`` = ``LINEWATCH_REDIS__KEY_PREFIX``; nothing is written outside it)::

    {p}:result:{camera}:{frame_id}    JSON result message              (TTL)
    {p}:heatmap:{camera}:{frame_id}   PNG uint8 heatmap                (TTL)
    {p}:frame:{camera}:{frame_id}     JPEG of the frame                (TTL)
    {p}:latest:{camera}               JSON of the camera's latest result
    {p}:results:{line}                capped stream, field ``result`` = JSON result
    {p}:alerts:{line}                 capped stream of results over threshold
    {p}:drift:{line}                  capped stream of drift events (drift monitor)
    {p}:lines                         set of product lines seen
    {p}:cameras:{line}                set of cameras seen on a line
    {p}:models                        pub/sub channel of model promotions / rollbacks
    {p}:minutes:{camera}              hash: ``n:{minute}`` results, ``a:{minute}``
                                      anomalous results per minute (2 h kept)
    {p}:health:{worker}               JSON worker health record (TTL, refreshed)
    {p}:workers                       sorted set: worker -> last health time
    {p}:reviews:{line}                hash: ``camera/frame_id`` -> JSON review
    {p}:false-alarms:{line}           capped stream: ``review`` JSON + ``frame`` JPEG,
                                      the trainer's candidate good frames

Model store (a directory; an object store can back it, see docs/contracts.md)::

    <store>/<line>/versions/<version>.safetensors   artifact, written once
    <store>/<line>/versions/<version>.json          trainer report, written once
    <store>/<line>/current                          the served version, replaced atomically

Camera ids, lines and frame ids are checked (:func:`pipeline.wire.messages.validate_id`)
before they become part of a key or a path, and versions must be safe file names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.wire.messages import validate_id

ARTIFACT_SUFFIX = ".safetensors"
#: How long the per-minute counters live (the console reads the last hour).
MINUTE_COUNT_TTL_S = 7200
MINUTES_KEPT = MINUTE_COUNT_TTL_S // 60
REPORT_SUFFIX = ".json"
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Builds every Redis key and channel under one prefix."""

    prefix: str = "linewatch"

    def result(self, camera: str, frame_id: str) -> str:
        """Per-frame result key."""
        return self._frame_key("result", camera, frame_id)

    def heatmap(self, camera: str, frame_id: str) -> str:
        """Per-frame heatmap PNG key."""
        return self._frame_key("heatmap", camera, frame_id)

    def frame(self, camera: str, frame_id: str) -> str:
        """Per-frame JPEG key."""
        return self._frame_key("frame", camera, frame_id)

    def latest(self, camera: str) -> str:
        """Latest result of a camera."""
        return f"{self.prefix}:latest:{validate_id(camera, 'camera')}"

    def results(self, line: str) -> str:
        """Capped stream of a line's results."""
        return self._line_key("results", line)

    def alerts(self, line: str) -> str:
        """Capped stream of a line's alerts."""
        return self._line_key("alerts", line)

    def drift(self, line: str) -> str:
        """Capped stream of a line's drift events."""
        return self._line_key("drift", line)

    def cameras(self, line: str) -> str:
        """Set of cameras seen on a line."""
        return self._line_key("cameras", line)

    def lines(self) -> str:
        """Set of product lines seen."""
        return f"{self.prefix}:lines"

    def models(self) -> str:
        """Pub/sub channel of model events (promotions, rollbacks)."""
        return f"{self.prefix}:models"

    def minutes(self, camera: str) -> str:
        """A camera's per-minute counters: ``n:<minute>``, ``a:<minute>`` (capture // 60)."""
        return f"{self.prefix}:minutes:{validate_id(camera, 'camera')}"

    def health(self, worker: str) -> str:
        """A worker's health record."""
        return f"{self.prefix}:health:{validate_id(worker, 'worker id')}"

    def workers(self) -> str:
        """Sorted set of workers by last health time."""
        return f"{self.prefix}:workers"

    def reviews(self, line: str) -> str:
        """Hash of a line's alert reviews."""
        return self._line_key("reviews", line)

    def false_alarms(self, line: str) -> str:
        """Capped stream of a line's frames marked as false alarms (with their JPEG)."""
        return self._line_key("false-alarms", line)

    def line_of_results(self, key: str) -> str:
        """The line a :meth:`results` key belongs to.

        Raises:
            ValueError: ``key`` is not a results key under this prefix.
        """
        line = key.removeprefix(f"{self.prefix}:results:")
        if line == key:
            raise ValueError(f"{key!r} is not a results key under {self.prefix!r}")
        return line

    def _frame_key(self, kind: str, camera: str, frame_id: str) -> str:
        validate_id(camera, "camera")
        validate_id(frame_id, "frame id")
        return f"{self.prefix}:{kind}:{camera}:{frame_id}"

    def _line_key(self, kind: str, line: str) -> str:
        return f"{self.prefix}:{kind}:{validate_id(line, 'product line')}"


def check_version(version: str) -> str:
    """Return ``version`` when it is a safe file name.

    Raises:
        ValueError: It is not.
    """
    if not _VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"model version {version!r} is not a safe file name")
    return version


def is_version(name: str) -> bool:
    """Whether ``name`` is a safe version name."""
    return _VERSION_PATTERN.fullmatch(name) is not None


def line_dir(root: Path, line: str) -> Path:
    """A line's folder in the store."""
    return Path(root) / validate_id(line, "product line")


def versions_dir(root: Path, line: str) -> Path:
    """Where a line's artifacts and reports live."""
    return line_dir(root, line) / "versions"


def artifact_path(root: Path, line: str, version: str) -> Path:
    """Where a line's version lives."""
    return versions_dir(root, line) / (check_version(version) + ARTIFACT_SUFFIX)


def report_path(root: Path, line: str, version: str) -> Path:
    """Where the trainer's report of a version lives (next to its artifact)."""
    return versions_dir(root, line) / (check_version(version) + REPORT_SUFFIX)


def current_path(root: Path, line: str) -> Path:
    """The line's pointer file (names the served version)."""
    return line_dir(root, line) / "current"
