"""The image-level Gaussian term: estimation, distances, scaling, and how a fit uses it."""

import numpy as np
import pytest
import torch

from model.calibration import matching_scale
from model.global_gaussian import GlobalGaussian, global_pool, ledoit_wolf
from model.metadata import GlobalGaussianTerm
from model.trainer import MIN_HOLDOUT_FOR_TERMS, FitConfig, fit_detector


def test_ledoit_wolf_barely_shrinks_plenty_of_correlated_samples():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 5))
    truth = mixing @ mixing.T + 0.1 * np.eye(5)
    samples = rng.multivariate_normal(np.arange(5.0), truth, size=20000)
    mean, covariance, shrinkage = ledoit_wolf(samples)
    assert shrinkage < 0.01
    np.testing.assert_allclose(mean, np.arange(5.0), atol=0.05)
    np.testing.assert_allclose(covariance, truth, atol=0.1 * np.abs(truth).max())


def test_ledoit_wolf_shrinks_isotropic_samples_to_the_identity():
    samples = np.random.default_rng(1).normal(size=(200, 20)) * 3.0
    _, covariance, shrinkage = ledoit_wolf(samples)
    assert shrinkage > 0.8
    np.testing.assert_allclose(np.diag(covariance), 9.0, rtol=0.2)


def test_fewer_images_than_dimensions_still_give_an_invertible_estimate():
    samples = np.random.default_rng(2).normal(size=(10, 50))
    samples[:, 1] = samples[:, 0]  # a singular sample covariance
    _, covariance, shrinkage = ledoit_wolf(samples)
    assert 0.0 < shrinkage <= 1.0
    np.linalg.cholesky(covariance)  # positive definite


def test_distances_are_mahalanobis_distances_under_the_shrunk_covariance():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    gaussian, shrinkage = GlobalGaussian.fit(torch.from_numpy(train))
    mean, covariance, expected_shrinkage = ledoit_wolf(train)
    assert shrinkage == expected_shrinkage
    queries = rng.normal(size=(5, 8)) * 2.0
    centred = queries - mean
    expected = np.sqrt(np.einsum("ij,ij->i", centred, np.linalg.solve(covariance, centred.T).T))
    actual = gaussian.distances(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4)


def test_the_term_is_the_weighted_distance_of_the_pooled_maps_from_the_center():
    rng = np.random.default_rng(4)
    gaussian, _ = GlobalGaussian.fit(torch.from_numpy(rng.normal(size=(100, 6))))
    scaled = gaussian.scaled(center=2.0, weight=0.5)
    maps = [torch.randn(3, 2, 4, 4), torch.randn(3, 4, 2, 2)]
    pooled = global_pool(maps)
    assert pooled.shape == (3, 6)
    torch.testing.assert_close(pooled[:, :2], maps[0].mean(dim=(2, 3)))
    torch.testing.assert_close(scaled(maps), 0.5 * (gaussian.distances(pooled) - 2.0))


def test_matching_scale_gives_the_distances_the_simplenet_spread():
    rng = np.random.default_rng(5)
    simplenet = rng.gumbel(size=200)
    distances = 30.0 + 7.0 * rng.gamma(3.0, size=200)
    center, weight = matching_scale(simplenet, distances)
    term = weight * (distances - center)
    assert np.median(term) == pytest.approx(0.0, abs=1e-9)
    spread = np.quantile(simplenet, 0.99) - np.median(simplenet)
    assert np.quantile(term, 0.99) - np.median(term) == pytest.approx(spread)
    assert matching_scale(simplenet, np.full(200, 3.0)) == (3.0, 1.0)  # degenerate: no scaling


def test_bad_terms_are_refused():
    gaussian, _ = GlobalGaussian.fit(torch.randn(50, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        gaussian.scaled(center=0.0, weight=0.0)
    with pytest.raises(ValueError, match="do not match"):
        GlobalGaussian(torch.zeros(4), torch.eye(3), center=0.0, weight=1.0)
    with pytest.raises(ValueError, match="finite"):
        GlobalGaussianTerm(center=float("nan"), weight=1.0, shrinkage=0.1, dims=4)
    with pytest.raises(ValueError, match="shrinkage"):
        GlobalGaussianTerm(center=0.0, weight=1.0, shrinkage=2.0, dims=4)


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8) for _ in range(count)]


SMALL_FIT = dict(image_size=48, heads=1, epochs=1, min_steps_per_epoch=5, hidden_dim=32)


def test_a_fit_adds_both_terms_and_calibrates_the_summed_score(lite0):
    images = _images(5 * MIN_HOLDOUT_FOR_TERMS)
    # one input scale, so the maps can be rebuilt from one backbone pass (the two-scale
    # arithmetic is tested in test_scales.py)
    config = FitConfig(**SMALL_FIT, memory_bank_size=300, second_scale=0.0)
    detector = fit_detector(images, config=config, product_line="a", backbone=lite0)
    assert detector.metadata.second_image_size is None
    term = detector.metadata.global_gaussian
    assert detector.global_gaussian is not None and term is not None
    assert term.dims == 344 and term.weight > 0.0 and 0.0 < term.shrinkage <= 1.0
    memory = detector.metadata.patch_memory
    assert detector.patch_memory is not None and memory is not None
    assert (memory.size, memory.dims) == (300, 344) and memory.weight > 0.0
    # the stored held-out scores are the summed score's: their median is the center
    assert np.median(detector.metadata.calibration_scores) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        batch = detector.preprocess(images[:4])
        maps, scores = detector.score(batch)
        assert detector.standardiser is not None  # a default fit standardises its input
        batch = detector.standardiser(batch)
        term_values = detector.global_gaussian(detector.backbone(batch))
        simplenet = detector.scorer(detector.backbone(batch))
        memory_map = detector.patch_memory(detector.aggregator(detector.backbone(batch)))
    torch.testing.assert_close(maps, simplenet + memory_map)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1) + term_values)
    np.testing.assert_allclose(detector.predict(images[:4]).scores, scores.numpy(), rtol=1e-5)


def test_a_fit_goes_without_the_terms_when_asked_or_with_few_held_out_images(lite0):
    off = fit_detector(
        _images(50),
        config=FitConfig(**SMALL_FIT, global_gaussian=False, memory_bank_size=0),
        product_line="a",
        backbone=lite0,
    )
    assert off.global_gaussian is None and off.metadata.global_gaussian is None
    assert off.patch_memory is None and off.metadata.patch_memory is None
    few = fit_detector(_images(12), config=FitConfig(**SMALL_FIT), product_line="a", backbone=lite0)
    assert few.metadata.holdout_image_count < MIN_HOLDOUT_FOR_TERMS
    assert few.global_gaussian is None and few.metadata.global_gaussian is None
    assert few.patch_memory is None and few.metadata.patch_memory is None
