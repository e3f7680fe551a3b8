import numpy as np
import pytest

from model.errors import DatasetError
from model.metadata import Calibration
from model.trainer import calibrate, split_holdout


def test_threshold_is_at_least_the_empirical_quantile():
    rng = np.random.default_rng(0)
    scores = rng.normal(-1.0, 0.1, size=200)
    calibration = calibrate(scores, 0.99)
    assert calibration.center == pytest.approx(np.median(scores))
    assert calibration.threshold >= np.quantile(scores, 0.99)
    # normal-tail estimate: about median + 2.33 sigma
    assert calibration.threshold == pytest.approx(-1.0 + 2.326 * 0.1, abs=0.03)


def test_few_scores_get_a_tail_estimate_above_their_max_when_needed():
    scores = np.array([-1.0, -0.98, -1.02, -0.99, -1.01])
    calibration = calibrate(scores, 0.99)
    assert calibration.threshold > scores.max() - 1e-9


def test_normalisation_maps_center_to_zero_and_threshold_to_half():
    calibration = Calibration(center=-2.0, threshold=-1.0, quantile=0.99)
    assert calibration.normalize(-2.0) == 0.0
    assert calibration.normalize(-1.0) == 0.5
    np.testing.assert_allclose(calibration.normalize(np.array([0.0])), [1.0])
    with pytest.raises(ValueError):
        Calibration(center=1.0, threshold=1.0, quantile=0.99)


def test_identical_scores_still_calibrate():
    calibration = calibrate(np.zeros(10), 0.99)
    assert calibration.threshold > calibration.center


def test_holdout_split_is_disjoint_and_seeded():
    train, holdout = split_holdout(50, 0.2, 2, seed=3)
    assert len(holdout) == 10 and len(train) == 40
    assert not set(train) & set(holdout)
    again = split_holdout(50, 0.2, 2, seed=3)
    np.testing.assert_array_equal(holdout, again[1])
    with pytest.raises(DatasetError):
        split_holdout(3, 0.2, 2, seed=0)
