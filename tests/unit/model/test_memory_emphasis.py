"""The memory term's emphasis over SimpleNet's map (FitConfig.memory_emphasis)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from model.calibration import matching_scale
from model.global_gaussian import global_pool
from model.trainer import MEMORY_EMPHASIS, FitConfig, fit_detector, split_holdout
from workers.trainer.settings import FitSettings

SMALL_FIT = dict(
    image_size=48, heads=1, epochs=1, min_steps_per_epoch=5, hidden_dim=32, memory_bank_size=200,
    all_images_in_terms=False,
)


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8) for _ in range(count)]


def test_the_memory_weight_is_the_matched_one_times_the_emphasis_and_the_gaussian_follows(lite0):
    images = _images(50)
    config = FitConfig(**SMALL_FIT)
    assert config.memory_emphasis == MEMORY_EMPHASIS == 2.0
    fits = {
        emphasis: fit_detector(
            images, config=replace(config, memory_emphasis=emphasis), product_line="a",
            backbone=lite0,
        )
        for emphasis in (1.0, 3.0)
    }
    plain, emphasised = fits[1.0], fits[3.0]
    # same heads, same bank, same center: only the memory weight is scaled
    for name, tensor in plain.head.state_dict().items():
        torch.testing.assert_close(tensor, emphasised.head.state_dict()[name])
    torch.testing.assert_close(plain.patch_memory.bank, emphasised.patch_memory.bank)
    assert emphasised.patch_memory.center == plain.patch_memory.center
    assert emphasised.patch_memory.weight == pytest.approx(3.0 * plain.patch_memory.weight)
    assert emphasised.metadata.patch_memory.weight == emphasised.patch_memory.weight

    # the Gaussian term is matched to the emphasised map on the held-out images
    _, holdout_index = split_holdout(
        len(images), config.holdout_fraction, config.min_holdout, config.seed
    )
    for detector in (plain, emphasised):
        with torch.no_grad():
            batch = detector.preprocess([images[i] for i in holdout_index])
            layer_maps, maps = detector.backbone_and_score_maps(batch)
            distances = detector.global_gaussian.distances(global_pool(layer_maps))
        maxima = maps.flatten(1).amax(dim=1).double().numpy()
        center, weight = matching_scale(maxima, distances.double().numpy())
        assert detector.global_gaussian.center == pytest.approx(center, rel=1e-4)
        assert detector.global_gaussian.weight == pytest.approx(weight, rel=1e-3)
    assert emphasised.global_gaussian.weight != pytest.approx(plain.global_gaussian.weight)


@pytest.mark.parametrize("bad", [0.0, -1.0, 101.0])
def test_a_memory_emphasis_out_of_range_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="memory_emphasis"):
        FitConfig(memory_emphasis=bad).resolved()
    with pytest.raises(ValidationError, match="memory_emphasis"):
        FitSettings(memory_emphasis=bad)
