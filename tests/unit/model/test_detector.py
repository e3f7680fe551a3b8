from dataclasses import replace

import numpy as np
import pytest
import torch

from model.detector import (
    AnomalyDetector,
    gaussian_blur,
    gaussian_kernel1d,
    heatmap_operators,
    images_to_tensor,
    upsample_and_blur,
)
from model.visualization import heatmap_to_uint8
from tests.unit.model.conftest import (
    full_detector,
    make_metadata,
    random_gaussian,
    random_memory,
    randomized_head,
)


def test_predict_shapes_and_calibration(random_detector, images):
    prediction = random_detector.predict(images)
    assert prediction.scores.shape == (3,)
    assert prediction.heatmaps.shape == (3, 64, 64)
    calibration = random_detector.metadata.calibration
    expected = (
        0.5
        * (prediction.scores - calibration.center)
        / (calibration.threshold - calibration.center)
    )
    np.testing.assert_allclose(prediction.normalized_scores, expected, rtol=1e-5)
    np.testing.assert_array_equal(prediction.labels, prediction.normalized_scores >= 0.5)


def test_predict_is_batch_independent(random_detector, images):
    together = random_detector.predict(images)
    alone = random_detector.predict(images[1:2])
    np.testing.assert_allclose(together.scores[1], alone.scores[0], rtol=1e-4)


def test_gaussian_kernel_and_blur():
    kernel = gaussian_kernel1d(4.0)
    assert kernel.numel() == 33 and kernel.sum().item() == pytest.approx(1.0)
    impulse = torch.zeros(1, 65, 65)
    impulse[0, 32, 32] = 1.0
    blurred = gaussian_blur(impulse)
    assert blurred.sum().item() == pytest.approx(1.0, rel=1e-4)
    assert blurred[0, 32, 32] == blurred.max()
    flat = torch.full((2, 40, 40), 3.0)
    assert torch.allclose(gaussian_blur(flat), flat, atol=1e-5)


@pytest.mark.parametrize(
    ("grid", "size"),
    [((32, 32), (256, 256)), ((8, 8), (64, 64)), ((4, 6), (20, 30)), ((3, 3), (8, 8))],
)
def test_heatmap_operators_match_upsample_and_blur(grid, size):
    torch.manual_seed(0)
    maps = torch.randn(3, *grid)
    operator_h, operator_w = heatmap_operators(grid, size)
    expected = upsample_and_blur(maps, size, 4.0)
    assert torch.allclose(operator_h @ maps @ operator_w.T, expected, atol=1e-5)


def test_detector_heatmaps_match_reference(random_detector):
    maps = torch.randn(2, 8, 8) * 3.0
    size = random_detector.metadata.image_size
    expected = upsample_and_blur(maps, (size, size), 4.0)
    assert torch.allclose(random_detector.heatmaps(maps), expected, atol=1e-5)


def test_heatmap_to_uint8():
    values = np.array([[-1.0, 0.0, 0.5, 1.0, 7.0]])
    assert heatmap_to_uint8(values).tolist() == [[0, 0, 127, 255, 255]]


def test_images_to_tensor_rejects_bad_input():
    with pytest.raises(ValueError, match="no images"):
        images_to_tensor([], 64, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="dtype"):
        images_to_tensor([np.zeros((64, 64, 3), np.float32)], 64, (0.5,) * 3, (0.5,) * 3)
    gray = images_to_tensor([np.zeros((30, 40), np.uint8)], 64, (0.5,) * 3, (0.5,) * 3)
    assert gray.shape == (1, 3, 64, 64)


def test_score_parts_that_disagree_with_the_metadata_are_refused(lite0):
    gaussian, gaussian_term = random_gaussian()
    memory, memory_term = random_memory()
    cases = [
        (
            dict(global_gaussian=gaussian_term, patch_memory=memory_term),
            dict(global_gaussian=gaussian),
        ),
        (dict(global_gaussian=gaussian_term), dict(global_gaussian=gaussian, patch_memory=memory)),
        (dict(global_gaussian=replace(gaussian_term, weight=0.5)), dict(global_gaussian=gaussian)),
        (dict(patch_memory=replace(memory_term, size=49)), dict(patch_memory=memory)),
        (dict(), dict(global_gaussian=gaussian)),
    ]
    for stated, given in cases:
        with pytest.raises(ValueError, match="does not match the metadata"):
            AnomalyDetector(
                backbone=lite0, head=randomized_head(), metadata=make_metadata(**stated), **given
            )
    both = AnomalyDetector(
        backbone=lite0,
        head=randomized_head(),
        metadata=make_metadata(global_gaussian=gaussian_term, patch_memory=memory_term),
        global_gaussian=gaussian,
        patch_memory=memory,
    )
    assert both.global_gaussian is gaussian and both.patch_memory is memory


def test_cuda_dtype_is_ignored_on_the_cpu(lite0, images):
    """The autocast choice (``bench/gpu.py``'s precisions) applies on CUDA only: a CPU batch
    scores the same whatever is asked."""
    detector = full_detector(lite0)
    batch = detector.preprocess(images)
    with torch.inference_mode():
        maps, scores = detector.score(batch)
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            other_maps, other_scores = detector.score(batch, cuda_dtype=dtype)
            assert other_maps.dtype == torch.float32
            torch.testing.assert_close(other_maps, maps, rtol=0, atol=0)
            torch.testing.assert_close(other_scores, scores, rtol=0, atol=0)


def _exposed(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """The same scene under another exposure: grey levels times ``gain`` plus ``offset``."""
    return np.clip(image.astype(np.float64) * gain + offset + 0.5, 0, 255).astype(np.uint8)


def test_standardised_input_makes_scores_independent_of_exposure(lite0):
    rng = np.random.default_rng(3)
    scene = rng.integers(60, 160, size=(64, 64, 3), dtype=np.uint8)
    shots = [scene, _exposed(scene, 1.5, -20.0), _exposed(scene, 0.6, 10.0)]
    standardised = full_detector(lite0)
    assert standardised.metadata.input_standardisation
    scores = standardised.predict(shots).scores
    # equal up to the uint8 rounding of the darker and brighter shots
    np.testing.assert_allclose(scores[1:], scores[0], rtol=0.02)
    plain = AnomalyDetector(
        backbone=lite0,
        head=randomized_head(),
        metadata=replace(standardised.metadata, input_standardisation=False),
        global_gaussian=standardised.global_gaussian,
        patch_memory=standardised.patch_memory,
    )
    raw = plain.predict(shots).scores
    assert np.max(np.abs(raw[1:] - raw[0])) > 10 * np.max(np.abs(scores[1:] - scores[0]))


def test_standardiser_brings_images_to_one_level_and_spread():
    from model.backbones import LITE_MEAN, LITE_STD
    from model.detector import INPUT_LEVEL, INPUT_SPREAD, IntensityStandardiser

    rng = np.random.default_rng(4)
    images = [
        rng.integers(0, 100, size=(32, 32, 3), dtype=np.uint8),
        rng.integers(100, 256, size=(32, 40, 3), dtype=np.uint8),
        np.full((32, 32, 3), 77, dtype=np.uint8),  # flat: no contrast to scale up
    ]
    standardiser = IntensityStandardiser(LITE_MEAN, LITE_STD)
    batch = standardiser(images_to_tensor(images, 32, LITE_MEAN, LITE_STD))
    raw = batch * torch.tensor(LITE_STD).view(1, 3, 1, 1) + torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    levels = raw.mean(dim=(1, 2, 3))
    spreads = raw.flatten(1).std(dim=1, unbiased=False)
    np.testing.assert_allclose(levels.numpy(), INPUT_LEVEL, atol=1e-5)
    np.testing.assert_allclose(spreads[:2].numpy(), INPUT_SPREAD, rtol=1e-4)
    assert torch.isfinite(batch).all() and float(spreads[2]) < 1e-5


def test_older_metadata_reads_without_standardisation_and_bad_values_are_refused():
    import json

    from model.errors import ArtifactError
    from model.metadata import DetectorMetadata

    raw = json.loads(make_metadata(input_standardisation=True).to_json())
    assert DetectorMetadata.from_json(json.dumps(raw)).input_standardisation is True
    del raw["input_standardisation"]
    assert DetectorMetadata.from_json(json.dumps(raw)).input_standardisation is False
    raw["input_standardisation"] = "yes"
    with pytest.raises(ArtifactError, match="input_standardisation"):
        DetectorMetadata.from_json(json.dumps(raw))
