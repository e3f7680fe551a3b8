import numpy as np
import pytest

from model.calibration import MIN_TAIL_SCORES, calibrate, tail_quantile
from model.errors import DatasetError
from model.metadata import Calibration
from model.trainer import split_holdout

SCORE_SETS = {
    "normal": lambda rng, n: rng.normal(-1.0, 0.1, n),
    "gumbel": lambda rng, n: rng.gumbel(0.0, 1.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 0.5, n),
    "max of patches": lambda rng, n: rng.normal(0.0, 1.0, (n, 256)).max(axis=1),
}


@pytest.mark.parametrize("name", sorted(SCORE_SETS))
def test_actual_false_alarm_rate_is_near_the_target(name):
    """On fresh good scores the calibrated threshold lets through about the target rate."""
    draw = SCORE_SETS[name]
    rng = np.random.default_rng(0)
    fresh = draw(rng, 100_000)
    rates = []
    for _ in range(60):
        calibration = calibrate(draw(rng, 110), 0.01)
        rates.append(np.mean(fresh > calibration.threshold))
    rates = np.array(rates)
    assert 0.006 <= np.median(rates) <= 0.016, np.median(rates)
    assert np.mean((rates >= 0.005) & (rates <= 0.02)) >= 0.5


def test_threshold_moves_with_the_target_and_records_it():
    scores = np.random.default_rng(1).gumbel(0.0, 1.0, 200)
    strict, loose = calibrate(scores, 0.001), calibrate(scores, 0.05)
    assert strict.threshold > loose.threshold
    assert strict.target_false_alarm_rate == 0.001 and loose.target_false_alarm_rate == 0.05
    assert loose.estimated_false_alarm_rate == pytest.approx(0.05)
    assert np.mean(scores > loose.threshold) == pytest.approx(0.05, abs=0.03)


def test_tail_fit_recovers_an_exponential_tail():
    scores = np.random.default_rng(2).exponential(1.0, 5000)
    threshold, estimated = tail_quantile(scores, 0.01)
    assert threshold == pytest.approx(np.log(100), rel=0.08)
    assert estimated == 0.01


def test_few_scores_get_a_conservative_estimate():
    scores = np.array([-1.0, -0.98, -1.02, -0.99, -1.01])
    assert len(scores) < MIN_TAIL_SCORES
    calibration = calibrate(scores, 0.01)
    assert calibration.threshold > scores.max() - 1e-9
    assert calibration.center == pytest.approx(-1.0)
    assert 0.0 < calibration.estimated_false_alarm_rate <= 0.01 + 1e-9


def test_normalisation_maps_center_to_zero_and_threshold_to_half():
    calibration = Calibration(
        center=-2.0, threshold=-1.0, target_false_alarm_rate=0.01, estimated_false_alarm_rate=0.01
    )
    assert calibration.normalize(-2.0) == 0.0
    assert calibration.normalize(-1.0) == 0.5
    np.testing.assert_allclose(calibration.normalize(np.array([0.0])), [1.0])
    with pytest.raises(ValueError):
        Calibration(1.0, 1.0, 0.01, 0.01)
    with pytest.raises(ValueError):
        Calibration(0.0, 1.0, 1.5, 0.01)


def test_format_2_calibration_is_read_as_a_rate():
    calibration = Calibration.from_dict({"center": 0.0, "threshold": 1.0, "quantile": 0.99})
    assert calibration.target_false_alarm_rate == pytest.approx(0.01)


def test_identical_scores_still_calibrate():
    for count in (10, 100):
        calibration = calibrate(np.zeros(count), 0.01)
        assert calibration.threshold > calibration.center
        assert calibration.estimated_false_alarm_rate == 0.0


def test_holdout_split_is_disjoint_and_seeded():
    train, holdout = split_holdout(50, 0.2, 2, seed=3)
    assert len(holdout) == 10 and len(train) == 40
    assert not set(train) & set(holdout)
    again = split_holdout(50, 0.2, 2, seed=3)
    np.testing.assert_array_equal(holdout, again[1])
    with pytest.raises(DatasetError):
        split_holdout(3, 0.2, 2, seed=0)
