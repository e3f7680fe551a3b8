"""The memory bank and the Gaussian rebuilt from every image after calibration."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.errors import ArtifactError
from model.metadata import ARTIFACT_FORMAT_VERSION, DetectorMetadata
from model.trainer import (
    MIN_HOLDOUT_FOR_TERMS,
    FitConfig,
    extract_patch_features,
    fit_detector,
    split_holdout,
)
from tests.unit.model.conftest import make_metadata

SMALL_FIT = dict(
    image_size=48, heads=1, epochs=1, min_steps_per_epoch=5, hidden_dim=32, memory_bank_size=200
)


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8) for _ in range(count)]


def _contains_rows(bank: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether any row of ``rows`` is also a row of ``bank`` (exactly)."""
    return bool((bank[:, None, :] == rows[None, :, :]).all(dim=-1).any())


def test_the_terms_see_the_held_out_images_and_keep_the_held_out_calibration(lite0):
    images = _images(50)
    config = FitConfig(**SMALL_FIT)
    on = fit_detector(images, config=config, product_line="a", backbone=lite0)
    off = fit_detector(
        images, config=replace(config, all_images_in_terms=False), product_line="a", backbone=lite0
    )
    assert on.metadata.terms_include_holdout and not off.metadata.terms_include_holdout
    # the heads, the calibration and both terms' scaling are the same fit's: set on the
    # held-out images against the training images' bank and Gaussian
    for name, tensor in on.head.state_dict().items():
        torch.testing.assert_close(tensor, off.head.state_dict()[name])
    assert on.metadata.calibration == off.metadata.calibration
    assert on.metadata.calibration_scores == off.metadata.calibration_scores
    assert on.metadata.patch_memory == off.metadata.patch_memory
    assert (on.metadata.global_gaussian.center, on.metadata.global_gaussian.weight) == (
        off.metadata.global_gaussian.center,
        off.metadata.global_gaussian.weight,
    )
    # what the terms hold differs: the held-out images' patches and pooled features
    train_index, holdout_index = split_holdout(
        len(images), config.holdout_fraction, config.min_holdout, config.seed
    )
    resolved = config.resolved()

    def features_of(index):
        return extract_patch_features(
            lite0,
            on.aggregator,
            [images[i] for i in index],
            resolved,
            second_size=resolved.second_image_size,
        )

    held_patches, held_pooled = features_of(holdout_index)
    _, train_pooled = features_of(train_index)
    held_rows = held_patches.reshape(-1, held_patches.shape[-1])
    assert on.patch_memory.bank.shape == off.patch_memory.bank.shape == (200, 344)
    assert _contains_rows(on.patch_memory.bank, held_rows)
    assert not _contains_rows(off.patch_memory.bank, held_rows)
    every = torch.cat([train_pooled, held_pooled]).double()
    torch.testing.assert_close(on.global_gaussian.mean.double(), every.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        off.global_gaussian.mean.double(), train_pooled.double().mean(0), atol=1e-5, rtol=0
    )
    # held-out images now lie in the bank: their memory term can only fall
    with torch.no_grad():
        held_batch = on.preprocess([images[i] for i in holdout_index])
        on_maps, _ = on.score(held_batch)
        off_maps, _ = off.score(held_batch)
    assert float(on_maps.amax()) <= float(off_maps.amax()) + 1e-4


def test_without_the_terms_nothing_is_rebuilt_or_recorded(lite0):
    config = replace(FitConfig(**SMALL_FIT), memory_bank_size=0, global_gaussian=False)
    detector = fit_detector(_images(50), config=config, product_line="a", backbone=lite0)
    assert detector.metadata.holdout_image_count >= MIN_HOLDOUT_FOR_TERMS
    assert detector.patch_memory is None and detector.global_gaussian is None
    assert not detector.metadata.terms_include_holdout


def test_metadata_reads_older_files_as_without_and_refuses_bad_values():
    assert ARTIFACT_FORMAT_VERSION >= 7
    raw = json.loads(make_metadata(terms_include_holdout=True).to_json())
    assert DetectorMetadata.from_json(json.dumps(raw)).terms_include_holdout is True
    del raw["terms_include_holdout"]
    assert DetectorMetadata.from_json(json.dumps(raw)).terms_include_holdout is False
    for bad in ("yes", 1, None):
        raw["terms_include_holdout"] = bad
        with pytest.raises(ArtifactError, match="terms_include_holdout"):
            DetectorMetadata.from_json(json.dumps(raw))
