"""The patch memory bank: coreset selection, nearest-neighbour distances, how a fit uses it."""

import numpy as np
import pytest
import torch

from model.patch_memory import PatchMemory, greedy_coreset


def test_the_coreset_keeps_rare_patterns_a_random_sample_of_its_size_misses():
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(20000, 16, generator=generator)
    rare = torch.randn(5, 16, generator=generator) * 0.1 + 12.0
    features = torch.cat([common, rare])
    chosen = greedy_coreset(features, 50, seed=0, candidates=len(features))
    assert len(chosen) == len(set(chosen.tolist())) == 50
    assert (chosen >= 20000).any()  # a rare patch is in the bank
    memory = PatchMemory(features[chosen], center=0.0, weight=1.0)
    rare_distance = memory.distances(rare.T.reshape(1, 16, 5, 1)).max()
    assert rare_distance < 1.0  # so rare normal patches stay close to the bank


def test_the_coreset_of_few_features_is_all_of_them():
    features = torch.randn(30, 4)
    assert greedy_coreset(features, 100).tolist() == list(range(30))
    again = greedy_coreset(torch.randn(500, 4), 20, seed=3)
    assert len(again) == 20 and again.max() < 500


def test_distances_are_the_nearest_neighbour_distances():
    generator = torch.Generator().manual_seed(1)
    bank = torch.randn(40, 8, generator=generator)
    features = torch.randn(2, 8, 3, 5, generator=generator)
    memory = PatchMemory(bank, center=1.5, weight=2.0)
    patches = features.flatten(2).transpose(1, 2).reshape(-1, 8)
    expected = torch.cdist(patches.double(), bank.double()).min(dim=1).values.reshape(2, 3, 5)
    torch.testing.assert_close(memory.distances(features).double(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(memory(features), 2.0 * (memory.distances(features) - 1.5))
    # a bank patch: ~0 (the expanded square loses ~1e-6 of |x|^2 in float32)
    assert memory.distances(bank.T.reshape(1, 8, 40, 1)).max() < 1e-2


def test_bad_memories_are_refused():
    with pytest.raises(ValueError, match="bank"):
        PatchMemory(torch.zeros(0, 4), center=0.0, weight=1.0)
    with pytest.raises(ValueError, match="weight"):
        PatchMemory(torch.zeros(3, 4), center=0.0, weight=-1.0)
    with pytest.raises(ValueError, match="finite"):
        PatchMemory(torch.zeros(3, 4), center=float("inf"), weight=1.0)


def test_the_memory_only_ever_raises_a_map_relative_to_its_center():
    """A patch far from every normal patch scores higher than one in the bank."""
    bank = torch.zeros(1, 2)
    memory = PatchMemory(bank, center=0.0, weight=1.0)
    features = torch.tensor([[[[0.0, 3.0]], [[0.0, 4.0]]]])  # [1, 2, 1, 2]
    np.testing.assert_allclose(memory(features).numpy(), [[[0.0, 5.0]]], atol=1e-6)
