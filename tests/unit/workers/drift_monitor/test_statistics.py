"""Unit tests of the pure drift detector (numpy only, no network)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.drift_monitor.statistics import (
    DriftConfig,
    DriftDetector,
    DriftMethod,
    DriftTransition,
    ks_critical_value,
    ks_statistic,
    population_stability_index,
)


def _calibration(rng: np.random.Generator, size: int = 100) -> np.ndarray:
    # Normalised scores of held-out good images: centred well below the 0.5 threshold.
    return rng.normal(0.30, 0.06, size=size)


def test_ks_statistic_hand_computed() -> None:
    # CDFs over {1,2,3,4}: ref 1/2 at x=2 vs sample 0 -> largest gap 0.5 at x = 2.
    assert ks_statistic(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert ks_statistic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0])) == 0.5
    assert ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 0.0


def test_ks_statistic_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=57)
    b = rng.normal(0.4, 1.2, size=91)
    grid = np.concatenate([a, b])
    brute = max(abs(np.mean(a <= x) - np.mean(b <= x)) for x in grid)
    assert ks_statistic(a, b) == pytest.approx(brute)


def test_ks_critical_value_known_coefficient() -> None:
    # c(0.05) = 1.358; equal sizes n = m = 100 -> 1.358 * sqrt(2 / 100).
    assert ks_critical_value(100, 100, 0.05) == pytest.approx(1.358 * np.sqrt(0.02), rel=1e-3)


def test_psi_zero_for_same_distribution_large_for_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert population_stability_index(ref, rng.normal(size=5000)) < 0.02
    assert population_stability_index(ref, rng.normal(1.0, 1.0, size=5000)) > 0.25


def test_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ks_statistic(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        DriftDetector([0.1, float("nan")], DriftConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_samples": 600, "window": 500},
        {"raise_above": 0.1, "clear_below": 0.2},
        {"window": 0},
        {"raise_above": 0.0, "clear_below": 0.0},
    ],
)
def test_config_rejects_inconsistent_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DriftConfig(**kwargs)


@pytest.mark.parametrize("method", [DriftMethod.KS, DriftMethod.PSI])
def test_no_alert_on_scores_from_calibration_distribution(method: DriftMethod) -> None:
    rng = np.random.default_rng(1)
    bound = (
        {"raise_above": 0.3, "clear_below": 0.15}
        if method is DriftMethod.KS
        else {"raise_above": 0.5, "clear_below": 0.2}
    )
    detector = DriftDetector(_calibration(rng), DriftConfig(method=method, **bound))
    evaluations = detector.update_many(rng.normal(0.30, 0.06, size=3000))
    assert evaluations, "the detector must evaluate once min_samples is reached"
    assert not any(e.drifting for e in evaluations)
    assert max(e.statistic for e in evaluations) < bound["raise_above"]


@pytest.mark.parametrize("method", [DriftMethod.KS, DriftMethod.PSI])
def test_alert_fires_on_shifted_scores_and_clears_after_recovery(method: DriftMethod) -> None:
    rng = np.random.default_rng(2)
    bound = (
        {"raise_above": 0.3, "clear_below": 0.15}
        if method is DriftMethod.KS
        else {"raise_above": 0.5, "clear_below": 0.2}
    )
    config = DriftConfig(method=method, window=300, min_samples=150, evaluate_every=10, **bound)
    detector = DriftDetector(_calibration(rng), config)
    detector.update_many(rng.normal(0.30, 0.06, size=400))
    assert not detector.drifting
    # Brighter frames: scores move up towards the threshold, still mostly below 0.5.
    shifted = detector.update_many(rng.normal(0.42, 0.06, size=400))
    started = [e for e in shifted if e.transition is DriftTransition.STARTED]
    assert len(started) == 1
    assert started[0].window_mean > started[0].reference_mean
    assert detector.drifting
    recovered = detector.update_many(rng.normal(0.30, 0.06, size=600))
    cleared = [e for e in recovered if e.transition is DriftTransition.CLEARED]
    assert len(cleared) == 1
    assert not detector.drifting


def test_min_samples_gate() -> None:
    detector = DriftDetector([0.3] * 50, DriftConfig(window=100, min_samples=40))
    # Far-off scores, but fewer than min_samples: no evaluation, no alert.
    assert detector.update_many([0.9] * 39) == []
    assert not detector.drifting
    evaluation = detector.update(0.9)
    assert evaluation is not None and evaluation.transition is DriftTransition.STARTED


def test_hysteresis_keeps_alert_between_bounds() -> None:
    reference = np.linspace(0.0, 1.0, 1000)
    config = DriftConfig(
        window=100, min_samples=100, raise_above=0.3, clear_below=0.1, evaluate_every=100
    )
    detector = DriftDetector(reference, config)
    # Uniform on [0.4, 1.0]: KS = 0.4 -> alert starts.
    first = detector.update_many(np.linspace(0.4, 1.0, 100))
    assert first[-1].transition is DriftTransition.STARTED
    # Uniform on [0.2, 1.0]: KS = 0.2, between the bounds -> alert stays, no transition.
    second = detector.update_many(np.linspace(0.2, 1.0, 100))
    assert second[-1].statistic == pytest.approx(0.2, abs=0.02)
    assert second[-1].drifting and second[-1].transition is None
    # Same distribution again -> KS ~ 0 -> alert clears.
    third = detector.update_many(np.linspace(0.0, 1.0, 100))
    assert third[-1].transition is DriftTransition.CLEARED


def test_non_finite_scores_are_ignored() -> None:
    detector = DriftDetector([0.3] * 10, DriftConfig(window=10, min_samples=5))
    assert detector.update(float("inf")) is None
    assert detector.sample_count == 0
