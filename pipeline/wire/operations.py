"""What the operator's console exchanges: worker health records and alert reviews.

:class:`WorkerHealth` is what every inference worker publishes to Redis on a short
interval (``{p}:health:{worker}``, :mod:`pipeline.wire.layout`); the dashboard reads it.
:class:`Review` is an operator's verdict on one alert (acknowledged, or a false alarm),
stored by the dashboard; a false alarm also carries the frame to the trainer
(``{p}:false-alarms:{line}``), which takes it as a candidate good frame for the line's next
refit. Both are JSON with a ``schema_version``; an unknown version is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import SchemaError
from pipeline.wire.messages import validate_id

HEALTH_SCHEMA_VERSION = 1
REVIEW_SCHEMA_VERSION = 1

#: The verdicts an operator can give an alert.
VERDICTS = ("acknowledged", "false_alarm")


def _load(text: str | bytes, version: int, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise SchemaError(f"{what} JSON is malformed: {error}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{what} JSON is not an object")
    if data.get("schema_version") != version:
        raise SchemaError(f"{what} schema version {data.get('schema_version')!r} is unknown",
                          reason="unknown_schema_version")
    return data


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """One inference worker's state, as published for the console.

    Attributes:
        worker_id: The worker's name (consumer-group member id).
        ts: When it was published, seconds since the Unix epoch.
        frames_per_s: Results stored per second over the last publishing interval.
        lag: Records behind the partition end, per ``topic/partition``.
        paused: Whether consumption is paused (Redis unreachable).
        dead_letters: Dead letters per reason since the worker started.
        models: Loaded model version per product line.
        no_model: Lines whose frames found no model in the last interval, with their cameras.
        schema_version: Health schema version.
    """

    worker_id: str
    ts: float
    frames_per_s: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    paused: bool = False
    dead_letters: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    no_model: dict[str, list[str]] = field(default_factory=dict)
    schema_version: int = HEALTH_SCHEMA_VERSION

    @property
    def lag_total(self) -> int:
        """Records behind over all assigned partitions."""
        return sum(self.lag.values())

    def to_json(self) -> str:
        """Compact JSON."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerHealth:
        """Parse a published record.

        Raises:
            SchemaError: Malformed, or of an unknown schema version.
        """
        data = _load(text, HEALTH_SCHEMA_VERSION, "worker health")
        try:
            return cls(
                worker_id=str(data["worker_id"]), ts=float(data["ts"]),
                frames_per_s=float(data.get("frames_per_s", 0.0)),
                lag={str(k): int(v) for k, v in data.get("lag", {}).items()},
                paused=bool(data.get("paused", False)),
                dead_letters={str(k): int(v) for k, v in data.get("dead_letters", {}).items()},
                models={str(k): str(v) for k, v in data.get("models", {}).items()},
                no_model={str(k): [str(c) for c in v]
                          for k, v in data.get("no_model", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SchemaError(f"worker health JSON is malformed: {error}") from None


@dataclass(frozen=True, slots=True)
class Review:
    """An operator's verdict on one alert.

    Attributes:
        line: Product line.
        camera_id: Camera.
        frame_id: The alert's frame.
        verdict: ``acknowledged`` or ``false_alarm``.
        by: Who reviewed it (the logged-in user).
        ts: When, seconds since the Unix epoch.
        normalized_score: The alert's score (0.5 = threshold).
        model_version: The model that raised it.
        capture_ts: When the frame was captured.
        schema_version: Review schema version.
    """

    line: str
    camera_id: str
    frame_id: str
    verdict: str
    by: str
    ts: float
    normalized_score: float = 0.0
    model_version: str = ""
    capture_ts: float = 0.0
    schema_version: int = REVIEW_SCHEMA_VERSION

    def __post_init__(self) -> None:
        validate_id(self.line, "product line")
        validate_id(self.camera_id, "camera id")
        validate_id(self.frame_id, "frame id")
        if self.verdict not in VERDICTS:
            raise SchemaError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if not self.by or len(self.by) > 128:
            raise SchemaError("a review names its reviewer (1-128 characters)")
        if not math.isfinite(self.ts):
            raise SchemaError(f"review time {self.ts!r} is not a valid time")

    @property
    def key(self) -> str:
        """The alert it reviews, ``camera/frame_id`` (a line's reviews are keyed by it)."""
        return f"{self.camera_id}/{self.frame_id}"

    def to_json(self) -> str:
        """Compact JSON."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Review:
        """Parse a stored review.

        Raises:
            SchemaError: Malformed, or of an unknown schema version.
        """
        data = _load(text, REVIEW_SCHEMA_VERSION, "review")
        try:
            return cls(**data)
        except TypeError as error:
            raise SchemaError(f"review JSON is malformed: {error}") from None
