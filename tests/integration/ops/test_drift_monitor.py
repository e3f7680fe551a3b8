"""Drift monitor against a real Redis: results stream in, drift events and metrics out."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import redis

from pipeline.observability import HealthServer, new_registry
from tests.integration.ops.results import LINE, publish_results
from workers.drift_monitor.monitor import DriftMonitor
from workers.drift_monitor.statistics import DriftConfig

pytestmark = pytest.mark.integration



class InMemoryReferences:
    """Calibration scores per model version, as the model store would give them."""

    def __init__(self, scores: dict[str, np.ndarray]) -> None:
        self.scores = scores
        self.requests: list[tuple[str, str]] = []

    def calibration_scores(self, line: str, model_version: str) -> np.ndarray:
        self.requests.append((line, model_version))
        if model_version not in self.scores:
            raise LookupError(f"no model {model_version}")
        return self.scores[model_version]


def _drain(monitor: DriftMonitor) -> int:
    total = 0
    while (handled := monitor.poll_once()) > 0:
        total += handled
    return total


def _events(client: redis.Redis, prefix: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(f"{prefix}:drift:{LINE}")
    ]


@pytest.fixture
def setup(redis_client: redis.Redis, key_prefix: str):
    rng = np.random.default_rng(7)
    references = InMemoryReferences(
        {"v1": rng.normal(0.30, 0.06, 100), "v2": rng.normal(0.3, 0.06, 100)}
    )
    registry = new_registry()
    config = DriftConfig(
        window=300, min_samples=150, raise_above=0.3, clear_below=0.15, evaluate_every=10
    )
    monitor = DriftMonitor(
        redis_client,
        key_prefix,
        references,
        config,
        registry,
        group="drift-test",
        consumer="c0",
        block_ms=50,
        batch_size=100,
    )
    redis_client.sadd(f"{key_prefix}:lines", LINE)
    return monitor, registry, references, rng


def test_normal_scores_raise_no_alert_shifted_scores_do(
    redis_client: redis.Redis, key_prefix: str, setup
) -> None:
    monitor, registry, _, rng = setup
    publish_results(redis_client, key_prefix, rng.normal(0.30, 0.06, 600), "v1", 0)
    assert _drain(monitor) == 600
    assert _events(redis_client, key_prefix) == []
    assert registry.get_sample_value("linewatch_drift_active", {"line": LINE}) == 0.0
    assert registry.get_sample_value("linewatch_drift_results_total", {"line": LINE}) == 600

    # Brighter frames: scores move up, most still under the 0.5 threshold (no frame alerts).
    shifted = rng.normal(0.42, 0.06, 400)
    assert np.mean(shifted >= 0.5) < 0.15
    publish_results(redis_client, key_prefix, shifted, "v1", 600)
    assert _drain(monitor) == 400
    events = _events(redis_client, key_prefix)
    assert [e["event"] for e in events] == ["drift_started"]
    assert float(events[0]["statistic"]) >= 0.3
    assert float(events[0]["window_mean"]) > float(events[0]["reference_mean"])
    assert events[0]["model_version"] == "v1"
    assert registry.get_sample_value("linewatch_drift_active", {"line": LINE}) == 1.0
    assert registry.get_sample_value("linewatch_drift_alerts_total", {"line": LINE}) == 1.0
    assert registry.get_sample_value("linewatch_drift_active", {"line": LINE}) == 1.0

    # A retrained model (new version, new calibration) clears the alert and starts afresh.
    publish_results(redis_client, key_prefix, rng.normal(0.30, 0.06, 50), "v2", 1000)
    _drain(monitor)
    events = _events(redis_client, key_prefix)
    assert [(e["event"], e["reason"]) for e in events] == [
        ("drift_started", "statistic"),
        ("drift_cleared", "model_version_changed"),
    ]
    assert monitor.detector(LINE).sample_count == 50
    # Everything read was acknowledged.
    assert redis_client.xpending(f"{key_prefix}:results:{LINE}", "drift-test")["pending"] == 0


def test_unknown_model_and_bad_results_are_counted_and_skipped(
    redis_client: redis.Redis, key_prefix: str, setup
) -> None:
    monitor, registry, references, rng = setup
    publish_results(redis_client, key_prefix, rng.normal(0.3, 0.06, 20), "v-missing", 0)
    redis_client.xadd(f"{key_prefix}:results:{LINE}", {"result": b"{not json"})
    assert _drain(monitor) == 21
    skipped = "linewatch_drift_skipped_total"
    assert registry.get_sample_value(skipped, {"line": LINE, "reason": "no_reference"}) == 20
    assert registry.get_sample_value(skipped, {"line": LINE, "reason": "bad_result"}) == 1
    # The missing reference is looked up once, not once per result.
    assert references.requests == [(LINE, "v-missing")]


def test_restarted_monitor_reads_its_pending_entries_first(
    redis_client: redis.Redis, key_prefix: str, setup
) -> None:
    monitor, _, _, rng = setup
    publish_results(redis_client, key_prefix, rng.normal(0.3, 0.06, 30), "v1", 0)
    monitor.lines()
    # A crash after reading, before the acknowledgement: entries stay pending for c0.
    redis_client.xgroup_create(f"{key_prefix}:results:{LINE}", "drift-test", id="0")
    redis_client.xreadgroup("drift-test", "c0", {f"{key_prefix}:results:{LINE}": ">"}, count=30)
    assert redis_client.xpending(f"{key_prefix}:results:{LINE}", "drift-test")["pending"] == 30
    assert _drain(monitor) == 30
    assert monitor.detector(LINE).sample_count == 30
    assert redis_client.xpending(f"{key_prefix}:results:{LINE}", "drift-test")["pending"] == 0


def test_metrics_endpoint_shows_drift(redis_client: redis.Redis, key_prefix: str, setup) -> None:
    monitor, registry, _, rng = setup
    publish_results(redis_client, key_prefix, rng.normal(0.6, 0.06, 200), "v1", 0)
    _drain(monitor)
    with HealthServer(registry, is_alive=lambda: True, is_ready=lambda: False) as health:
        url = f"http://127.0.0.1:{health.port}"
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'linewatch_drift_active{line="tiles"} 1' in text
        assert 'linewatch_drift_alerts_total{line="tiles"} 1' in text
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(url + "/readyz", timeout=5)
        assert raised.value.code == 503
