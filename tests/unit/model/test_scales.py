"""The second input scale: the resize as matrices, the merge of the maps, fit and metadata."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from model.detector import InputRescaler, merge_scales, resize_operator
from model.errors import ArtifactError
from model.metadata import DetectorMetadata
from model.trainer import FitConfig, extract_patch_features, fit_detector
from tests.unit.model.conftest import make_metadata, two_scale_reference


@pytest.mark.parametrize(("size", "target"), [(256, 192), (64, 48), (96, 37)])
def test_the_rescaler_is_the_antialiased_bilinear_resize(size, target):
    batch = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    expected = F.interpolate(
        batch, size=(target, target), mode="bilinear", align_corners=False, antialias=True
    )
    actual = InputRescaler(size, target)(batch)
    assert actual.shape == (2, 3, target, target)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    # each output pixel is a weighted mean of input pixels: rows sum to one
    torch.testing.assert_close(resize_operator(size, target).sum(dim=1), torch.ones(target))


def test_merge_scales_keeps_one_map_and_averages_two_on_the_full_grid():
    full = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    assert merge_scales([full]) is full
    second = torch.full((2, 6, 6), 10.0)
    second[1] = 20.0
    merged = merge_scales([full, second])
    assert merged.shape == (2, 8, 8)
    # a constant map resizes to the same constant, so the mean is exact
    torch.testing.assert_close(merged[0], (full[0] + 10.0) / 2)
    torch.testing.assert_close(merged[1], (full[1] + 20.0) / 2)
    # a hot spot in the second scale shows up where it is on the full grid
    spot = torch.zeros(1, 6, 6)
    spot[0, 0, 5] = 6.0
    hot = merge_scales([torch.zeros(1, 8, 8), spot])
    assert np.unravel_index(int(hot.argmax()), (8, 8)) == (0, 7)


def test_second_scale_settings_are_checked_and_named():
    assert FitConfig().second_image_size == 192  # the default: 0.75 x 256
    assert FitConfig(second_scale=0.0).second_image_size is None
    assert FitConfig(image_size=64, second_scale=0.75).resolved().second_image_size == 48
    # 0.1 x 256 = 26 px, under the 32 px floor; 0.999 x 256 rounds to 256, no smaller
    for bad in (1.0, 1.5, -0.1, 0.1, 0.999):
        with pytest.raises(ValueError, match="second_scale"):
            FitConfig(second_scale=bad).resolved()


def test_metadata_reads_older_files_as_one_scale_and_refuses_bad_sizes():
    raw = json.loads(make_metadata(second_image_size=48).to_json())
    assert DetectorMetadata.from_json(json.dumps(raw)).second_image_size == 48
    del raw["second_image_size"]  # formats 2 to 5
    assert DetectorMetadata.from_json(json.dumps(raw)).second_image_size is None
    for bad in (64, 65, 31, 0, -48, 48.0, "48", True):  # image_size is 64
        raw["second_image_size"] = bad
        with pytest.raises(ArtifactError, match="second_image_size"):
            DetectorMetadata.from_json(json.dumps(raw))


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for _ in range(count)]


def test_the_feature_cache_holds_the_patches_of_both_scales(lite0):
    config = FitConfig(image_size=64, batch_size=4).resolved()
    aggregator_args = dict(common_dim=config.common_dim, embed_dim=config.embed_dim)
    from model.features import PatchFeatureAggregator

    aggregator = PatchFeatureAggregator(lite0.spec, **aggregator_args)
    images = _images(5)
    one, pooled_one = extract_patch_features(lite0, aggregator, images, config)
    both, pooled_both = extract_patch_features(lite0, aggregator, images, config, second_size=48)
    assert one.shape == (5, 8 * 8, 344) and both.shape == (5, 8 * 8 + 6 * 6, 344)
    torch.testing.assert_close(both[:, :64], one)  # the full scale first, unchanged
    torch.testing.assert_close(pooled_both, pooled_one)  # pooled from the full scale only


def test_a_default_fit_scores_both_scales_and_calibrates_the_merged_score(lite0):
    images = _images(50)
    config = FitConfig(image_size=64, heads=1, epochs=1, min_steps_per_epoch=5, hidden_dim=32,
                       memory_bank_size=200)
    detector = fit_detector(images, config=config, product_line="a", backbone=lite0)
    assert detector.metadata.second_image_size == 48 and detector.rescaler is not None
    assert np.median(detector.metadata.calibration_scores) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        batch = detector.preprocess(images[:4])
        maps, scores = detector.score(batch)
        per_scale, merged, term = two_scale_reference(detector, batch)
    # The product resizes by a fixed matrix, the reference by F.interpolate (6e-8 apart at
    # the input, 1e-5 in the patch features); these images' own patches are in the memory
    # bank, and the square root of a near-zero float32 distance grows that to 3e-5 in maps
    # of at most 0.03 on some CPUs. A merge that drops the second scale is 0.025 off, one
    # that weighs the scales 0.6 / 0.4 is 0.005 off.
    torch.testing.assert_close(maps, merged, rtol=1e-4, atol=1e-4)
    assert float((maps - per_scale[0]).abs().max()) > 1e-2
    torch.testing.assert_close(scores, maps.flatten(1).amax(1) + term)
    single = (per_scale[0].flatten(1).amax(1) + term)
    assert not torch.allclose(scores, single)  # the second scale moves the score
