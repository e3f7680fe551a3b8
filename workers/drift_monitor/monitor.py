"""Drift monitor: follows each line's results stream and raises drift alerts.

For every product line it reads ``{p}:results:{line}`` with a Redis consumer group, feeds the
normalised scores to a :class:`~workers.drift_monitor.statistics.DriftDetector` whose
reference is the
``calibration_scores`` of the model version that produced them, and when the detector's
alert starts or clears it appends an event to ``{p}:drift:{line}`` and updates the
Prometheus gauges served on ``/metrics``.

A result from a new model version replaces the line's detector (new calibration, empty
window); an alert that was active is cleared with ``reason=model_version_changed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from model.errors import ModelError
from pipeline.errors import SchemaError
from pipeline.redis.client import UNREACHABLE_ERRORS
from pipeline.redis.streams import StreamGroupReader
from pipeline.retry import Backoff, repeat_until_stopped
from pipeline.runtimes import pytorch
from pipeline.wire.layout import RedisKeys, artifact_path
from pipeline.wire.messages import ResultMessage
from workers.drift_monitor.statistics import (
    DriftConfig,
    DriftDetector,
    DriftEvaluation,
    DriftTransition,
)

logger = logging.getLogger(__name__)

REFERENCE_RETRY_S = 60.0


class ReferenceSource(Protocol):
    """Gives the calibration scores of a line's model version."""

    def calibration_scores(self, line: str, model_version: str) -> np.ndarray:
        """Return the normalised calibration scores, shape ``[M]``.

        Raises:
            LookupError: If the model version or its scores cannot be found.
        """
        ...


class ModelStoreReference:
    """Reads calibration scores from the model store's artifacts (verified header only).

    Args:
        store_dir: Root of the model store.
    """

    def __init__(self, store_dir: Path) -> None:
        self._store_dir = store_dir

    def calibration_scores(self, line: str, model_version: str) -> np.ndarray:
        """Read the artifact's metadata and return its calibration scores.

        Raises:
            LookupError: If the artifact is missing, unreadable or has no scores.
        """
        try:
            path = artifact_path(self._store_dir, line, model_version)
        except (SchemaError, ValueError) as error:
            raise LookupError(f"no artifact for {line!r} {model_version!r}: {error}") from error
        if not path.is_file():
            raise LookupError(f"no artifact {path}")
        try:
            scores = pytorch.calibration_scores(path)
        except ModelError as error:
            raise LookupError(f"unreadable artifact {path}: {error}") from error
        if scores.size == 0:
            raise LookupError(f"artifact {path} carries no calibration scores")
        return scores


class DriftMetrics:
    """Metrics of the drift monitor (served on ``/metrics``).

    Args:
        registry: Registry to register the metrics in.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.statistic = Gauge("linewatch_drift_statistic",
                               "Latest drift statistic (KS or PSI) of the line's score window",
                               ["line"], registry=registry)
        self.active = Gauge("linewatch_drift_active",
                            "1 while a drift alert is active on the line", ["line"],
                            registry=registry)
        self.window_samples = Gauge("linewatch_drift_window_samples",
                                    "Scores in the line's drift window", ["line"],
                                    registry=registry)
        self.alerts = Counter("linewatch_drift_alerts_total", "Drift alerts started on the line",
                              ["line"], registry=registry)
        self.results = Counter("linewatch_drift_results_total",
                               "Results read by the drift monitor", ["line"], registry=registry)
        self.skipped = Counter("linewatch_drift_skipped_total",
                               "Results the drift monitor could not use", ["line", "reason"],
                               registry=registry)


@dataclass
class _LineState:
    model_version: str
    detector: DriftDetector


class DriftMonitor:
    """Follows the results streams of the lines and publishes drift events.

    Args:
        client: Redis client (responses not decoded).
        prefix: Key prefix.
        references: Source of calibration scores per (line, model version).
        config: Detector bounds.
        registry: Prometheus registry for the monitor's metrics.
        group: Consumer group name.
        consumer: Consumer name within the group.
        lines: Lines to follow; empty means every line in ``{p}:lines``.
        block_ms: How long one read waits for new results.
        batch_size: Most results read per stream and read.
        drift_stream_maxlen: Approximate cap of each ``{p}:drift:{line}`` stream.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        references: ReferenceSource,
        config: DriftConfig,
        registry: CollectorRegistry,
        *,
        group: str = "drift-monitor",
        consumer: str = "drift-monitor-0",
        lines: Sequence[str] = (),
        block_ms: int = 1000,
        batch_size: int = 200,
        drift_stream_maxlen: int = 1000,
    ) -> None:
        self._client = client
        self._keys = RedisKeys(prefix)
        self._references = references
        self._config = config
        self.metrics = DriftMetrics(registry)
        self._reader = StreamGroupReader(client, group, consumer, block_ms=block_ms,
                                         count=batch_size)
        self._fixed_lines = tuple(lines)
        self._block_ms = block_ms
        self._drift_maxlen = drift_stream_maxlen
        self._states: dict[str, _LineState] = {}
        self._reference_failures: dict[tuple[str, str], float] = {}
        self.last_progress = time.monotonic()

    def detector(self, line: str) -> DriftDetector | None:
        """The line's current detector, if a result has been seen."""
        state = self._states.get(line)
        return None if state is None else state.detector

    def lines(self) -> list[str]:
        """Lines to follow: the configured ones, else those registered in Redis."""
        if self._fixed_lines:
            return list(self._fixed_lines)
        members = self._client.smembers(self._keys.lines())
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    def poll_once(self) -> int:
        """Read one batch from every followed line, process it and acknowledge it.

        Own pending entries (left by a crash before the acknowledgement) are read first;
        once a line has none left, its new entries are read.

        Returns:
            Number of stream entries handled.
        """
        self.last_progress = time.monotonic()
        lines = self.lines()
        if not lines:
            time.sleep(self._block_ms / 1000)
            return 0
        entries = self._reader.read([self._keys.results(line) for line in lines])
        by_stream: dict[str, list[bytes]] = {}
        for entry in entries:
            if entry.fields is not None:  # None: pending entry trimmed from the capped stream
                self._handle(self._keys.line_of_results(entry.stream), entry.entry_id,
                             entry.fields)
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        for stream, ids in by_stream.items():
            self._reader.ack(stream, *ids)
        return len(entries)

    def _handle(self, line: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.metrics.results.labels(line=line).inc()
        raw = fields.get(b"result")
        try:
            if raw is None:
                raise SchemaError("stream entry has no result field")
            result = ResultMessage.from_json(raw)
        except SchemaError as error:
            logger.warning("line %s entry %r: unusable result (%s)", line, entry_id, error)
            self.metrics.skipped.labels(line=line, reason="bad_result").inc()
            return
        state = self._state_for(line, result.model_version)
        if state is None:
            self.metrics.skipped.labels(line=line, reason="no_reference").inc()
            return
        evaluation = state.detector.update(result.normalized_score)
        self.metrics.window_samples.labels(line=line).set(state.detector.sample_count)
        if evaluation is None:
            return
        self.metrics.statistic.labels(line=line).set(evaluation.statistic)
        self.metrics.active.labels(line=line).set(1.0 if evaluation.drifting else 0.0)
        if evaluation.transition is not None:
            self._publish(
                line, result.model_version, evaluation, evaluation.transition, result.frame_id
            )

    def _state_for(self, line: str, version: str) -> _LineState | None:
        state = self._states.get(line)
        if state is not None and state.model_version == version:
            return state
        failed_at = self._reference_failures.get((line, version))
        if failed_at is not None and time.monotonic() - failed_at < REFERENCE_RETRY_S:
            return None
        try:
            reference = self._references.calibration_scores(line, version)
        except LookupError as error:
            logger.warning("line %s model %s: no calibration scores (%s)", line, version, error)
            self._reference_failures[(line, version)] = time.monotonic()
            return None
        self._reference_failures.pop((line, version), None)
        new_state = _LineState(version, DriftDetector(reference, self._config))
        if state is not None and state.detector.drifting and state.detector.last_evaluation:
            self._publish(
                line,
                state.model_version,
                state.detector.last_evaluation,
                DriftTransition.CLEARED,
                "",
                reason="model_version_changed",
            )
        logger.info(
            "line %s: drift reference from model %s (%d scores)", line, version, reference.size
        )
        self._states[line] = new_state
        self.metrics.active.labels(line=line).set(0.0)
        return new_state

    def _publish(
        self,
        line: str,
        version: str,
        evaluation: DriftEvaluation,
        transition: DriftTransition,
        last_frame_id: str,
        reason: str = "statistic",
    ) -> None:
        event = {
            "event": transition.value,
            "reason": reason,
            "line": line,
            "model_version": version,
            "method": self._config.method.value,
            "statistic": f"{evaluation.statistic:.6f}",
            "raise_above": str(self._config.raise_above),
            "clear_below": str(self._config.clear_below),
            "window_samples": str(evaluation.sample_count),
            "reference_samples": str(evaluation.reference_count),
            "window_mean": f"{evaluation.window_mean:.6f}",
            "reference_mean": f"{evaluation.reference_mean:.6f}",
            "last_frame_id": last_frame_id,
            "at": f"{time.time():.3f}",
        }
        self._client.xadd(self._keys.drift(line), event, maxlen=self._drift_maxlen,
                          approximate=True)
        if transition is DriftTransition.STARTED:
            self.metrics.alerts.labels(line=line).inc()
            logger.warning(
                "line %s: drift started (%s %.3f >= %.3f, window mean %.3f vs %.3f)",
                line,
                event["method"],
                evaluation.statistic,
                self._config.raise_above,
                evaluation.window_mean,
                evaluation.reference_mean,
            )
        else:
            logger.info("line %s: drift cleared (%s)", line, reason)

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set (Redis outages are waited out with backoff).

        Args:
            stop: Set by the signal handler to end the loop after the batch in hand.
        """
        repeat_until_stopped(self.poll_once, stop=stop, retry_on=UNREACHABLE_ERRORS,
                             backoff=Backoff(0.5, 10.0), what="reading results")
