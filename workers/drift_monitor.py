"""Drift monitor: follows each line's results stream and raises drift alerts.

For every product line it reads ``{p}:results:{line}`` with a Redis consumer group, feeds the
normalised scores to a :class:`pipeline.drift.DriftDetector` whose reference is the
``calibration_scores`` of the model version that produced them, and when the detector's
alert starts or clears it appends an event to ``{p}:drift:{line}`` and updates the
Prometheus gauges served on ``/metrics``.

A result from a new model version replaces the line's detector (new calibration, empty
window); an alert that was active is cleared with ``reason=model_version_changed``.

Run: ``python -m workers.drift_monitor`` (settings: ``LINEWATCH_`` env, see
``docs/configuration.md``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import redis

from pipeline.drift import DriftConfig, DriftDetector, DriftEvaluation, DriftTransition
from pipeline.errors import SchemaError
from pipeline.messages import ResultMessage
from pipeline.observability import MetricsRegistry

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
    """Reads calibration scores from the model store's artifacts (header only).

    Layout: ``<store>/<line>/versions/<version>.safetensors``.

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
        from model.artifact import read_metadata
        from model.errors import ModelError

        path = self._store_dir / line / "versions" / f"{model_version}.safetensors"
        if not path.is_file():
            raise LookupError(f"no artifact {path}")
        try:
            scores = np.asarray(read_metadata(path).calibration_scores, dtype=np.float64)
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

    def __init__(self, registry: MetricsRegistry) -> None:
        self.statistic = registry.gauge(
            "linewatch_drift_statistic",
            "Latest drift statistic (KS or PSI) of the line's score window",
            ["line"],
        )
        self.active = registry.gauge(
            "linewatch_drift_active", "1 while a drift alert is active on the line", ["line"]
        )
        self.window_samples = registry.gauge(
            "linewatch_drift_window_samples", "Scores in the line's drift window", ["line"]
        )
        self.alerts = registry.counter(
            "linewatch_drift_alerts_total", "Drift alerts started on the line", ["line"]
        )
        self.results = registry.counter(
            "linewatch_drift_results_total", "Results read by the drift monitor", ["line"]
        )
        self.skipped = registry.counter(
            "linewatch_drift_skipped_total",
            "Results the drift monitor could not use",
            ["line", "reason"],
        )


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
        registry: MetricsRegistry,
        *,
        group: str = "drift-monitor",
        consumer: str = "drift-monitor-0",
        lines: Sequence[str] = (),
        block_ms: int = 1000,
        batch_size: int = 200,
        drift_stream_maxlen: int = 1000,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._references = references
        self._config = config
        self.metrics = DriftMetrics(registry)
        self._group = group
        self._consumer = consumer
        self._fixed_lines = tuple(lines)
        self._block_ms = block_ms
        self._batch_size = batch_size
        self._drift_maxlen = drift_stream_maxlen
        self._states: dict[str, _LineState] = {}
        self._grouped: set[str] = set()
        self._pending_drained: set[str] = set()
        self._reference_failures: dict[tuple[str, str], float] = {}
        self.last_progress = time.monotonic()

    def results_key(self, line: str) -> str:
        """Key of the line's results stream."""
        return f"{self._prefix}:results:{line}"

    def drift_key(self, line: str) -> str:
        """Key of the line's drift event stream."""
        return f"{self._prefix}:drift:{line}"

    def detector(self, line: str) -> DriftDetector | None:
        """The line's current detector, if a result has been seen."""
        state = self._states.get(line)
        return None if state is None else state.detector

    def lines(self) -> list[str]:
        """Lines to follow: the configured ones, else those registered in Redis."""
        if self._fixed_lines:
            return list(self._fixed_lines)
        members = self._client.smembers(f"{self._prefix}:lines")
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    def _ensure_group(self, line: str) -> None:
        if line in self._grouped:
            return
        try:
            self._client.xgroup_create(self.results_key(line), self._group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self._group, self.results_key(line))
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._grouped.add(line)

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
        for line in lines:
            self._ensure_group(line)
        if any(line not in self._pending_drained for line in lines):
            handled = self._read(lines, pending=True)
            if handled:
                return handled
        return self._read(lines, pending=False)

    def _read(self, lines: list[str], *, pending: bool) -> int:
        if pending:
            streams = {self.results_key(ln): "0" for ln in lines if ln not in self._pending_drained}
        else:
            streams = {self.results_key(ln): ">" for ln in lines}
        response = self._client.xreadgroup(
            self._group,
            self._consumer,
            streams,
            count=self._batch_size,
            block=None if pending else self._block_ms,
        )
        handled = 0
        with_entries = set()
        for raw_key, entries in response or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            line = key.removeprefix(f"{self._prefix}:results:")
            ids = []
            for entry_id, fields in entries:
                if fields is not None:  # None: pending entry trimmed from the capped stream
                    self._handle(line, entry_id, fields)
                ids.append(entry_id)
            if ids:
                self._client.xack(key, self._group, *ids)
                with_entries.add(line)
            handled += len(ids)
        if pending:
            self._pending_drained.update(
                key.removeprefix(f"{self._prefix}:results:")
                for key in streams
                if key.removeprefix(f"{self._prefix}:results:") not in with_entries
            )
        return handled

    def _handle(self, line: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.metrics.results.inc(line=line)
        raw = fields.get(b"result")
        try:
            if raw is None:
                raise SchemaError("stream entry has no result field")
            result = ResultMessage.from_json(raw)
        except SchemaError as error:
            logger.warning("line %s entry %r: unusable result (%s)", line, entry_id, error)
            self.metrics.skipped.inc(line=line, reason="bad_result")
            return
        state = self._state_for(line, result.model_version)
        if state is None:
            self.metrics.skipped.inc(line=line, reason="no_reference")
            return
        evaluation = state.detector.update(result.normalized_score)
        self.metrics.window_samples.set(state.detector.sample_count, line=line)
        if evaluation is None:
            return
        self.metrics.statistic.set(evaluation.statistic, line=line)
        self.metrics.active.set(1.0 if evaluation.drifting else 0.0, line=line)
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
        self.metrics.active.set(0.0, line=line)
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
        self._client.xadd(self.drift_key(line), event, maxlen=self._drift_maxlen, approximate=True)
        if transition is DriftTransition.STARTED:
            self.metrics.alerts.inc(line=line)
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
        """Poll until ``stop`` is set.

        Args:
            stop: Set by the signal handler to end the loop after the batch in hand.
        """
        while not stop.is_set():
            try:
                self.poll_once()
            except redis.ConnectionError as error:
                logger.warning("redis unavailable (%s); retrying", error)
                stop.wait(1.0)


def main() -> None:
    """Run the drift monitor until SIGTERM or SIGINT."""
    from pipeline.observability import HealthServer
    from pipeline.ops_settings import DriftSettings, redis_client

    settings = DriftSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    client = redis_client(settings.redis)
    registry = MetricsRegistry()
    monitor = DriftMonitor(
        client,
        settings.redis.key_prefix,
        ModelStoreReference(settings.model_store),
        settings.drift.to_config(),
        registry,
        group=settings.consumer_group,
        consumer=settings.consumer_name,
        lines=settings.lines,
        block_ms=settings.block_ms,
        batch_size=settings.batch_size,
        drift_stream_maxlen=settings.drift_stream_maxlen,
    )

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    stall_s = max(30.0, 10 * settings.block_ms / 1000)
    health = HealthServer(
        registry,
        is_alive=lambda: time.monotonic() - monitor.last_progress < stall_s,
        is_ready=ready,
        host=settings.http.host,
        port=settings.http.port,
    )
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logger.info("signal %d: stopping after the batch in hand", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if settings.http.enabled:
        health.start()
    try:
        monitor.run(stop)
    finally:
        health.stop()
        client.close()


if __name__ == "__main__":
    main()
