import numpy as np
import torch

from model.local_anomalies import local_anomaly, local_anomaly_set, perlin_mask, perlin_noise
from model.trainer import FitConfig, local_anomaly_features


def _images(count: int, shape=(48, 40)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(60, 200, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def test_perlin_noise_is_smooth_and_seeded():
    noise = perlin_noise(np.random.default_rng(1), (64, 64), (4, 4))
    again = perlin_noise(np.random.default_rng(1), (64, 64), (4, 4))
    assert noise.shape == (64, 64) and np.array_equal(noise, again)
    assert np.abs(noise).max() <= 1.5
    # neighbouring pixels differ far less than the field's range: smooth, not white noise
    assert np.abs(np.diff(noise, axis=1)).mean() < 0.1 * (noise.max() - noise.min())


def test_masks_are_blobs_covering_part_of_the_image():
    rng = np.random.default_rng(2)
    shares = [perlin_mask(rng, (64, 64)).mean() for _ in range(20)]
    assert all(0.0 < share < 0.7 for share in shares)


def test_local_anomaly_changes_only_inside_its_mask():
    good, other = _images(2)
    picture, mask = local_anomaly(np.random.default_rng(3), good, other)
    assert picture.shape == good.shape and picture.dtype == np.uint8 and mask.any()
    changed = np.abs(picture.astype(int) - good.astype(int)).max(axis=2) > 0
    assert not (changed & ~mask).any()


def test_set_takes_the_texture_from_another_image():
    images = _images(3)
    pictures, masks = local_anomaly_set(images, seed=0)
    assert len(pictures) == len(masks) == 3
    again, _ = local_anomaly_set(images, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(pictures, again, strict=True))


def test_only_covered_patches_become_training_anomalies(lite0):
    from model.features import PatchFeatureAggregator

    config = FitConfig(image_size=64, batch_size=4).resolved()
    aggregator = PatchFeatureAggregator(
        lite0.spec, common_dim=config.common_dim, embed_dim=config.embed_dim
    )
    features = local_anomaly_features(lite0, aggregator, _images(12, (64, 64)), config)
    assert features.ndim == 2 and features.shape[1] == config.embed_dim
    # some patches of some images, never all of them
    assert 0 < features.shape[0] < 12 * 8 * 8
    assert torch.isfinite(features).all()
