import torch

from model.network import SimpleNetHead
from model.trainer import FitConfig, _init_head, train_heads


def _clustered_features(images: int, patches: int, dim: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, dim, generator=generator) * 2.0
    picks = torch.randint(0, 4, (images, patches), generator=generator)
    return centers[picks] + 0.1 * torch.randn(images, patches, dim, generator=generator)


def test_a_head_starts_as_identity_adaptor_into_a_flat_discriminator():
    head = SimpleNetHead(16, 32)
    _init_head(head)
    assert torch.equal(head.adaptor.linear.weight, torch.eye(16))
    assert torch.count_nonzero(head.adaptor.linear.bias) == 0
    assert torch.count_nonzero(head.discriminator.output.weight) == 0
    assert torch.count_nonzero(head(torch.randn(8, 16))) == 0


def test_heads_are_trained_from_consecutive_seeds():
    features = _clustered_features(2, 256)
    config = FitConfig(embed_dim=16, common_dim=16, hidden_dim=32, epochs=1, heads=2,
                       noise_sigma=0.5).resolved()
    ensemble = train_heads(features, config)
    first, second = ensemble.members
    assert not torch.equal(first.discriminator.hidden.weight, second.discriminator.hidden.weight)
    assert ensemble.score_floor == -config.margin


def test_a_small_fit_still_learns_to_separate_noise_from_normal_features():
    # 3 images x 64 patches: under one default-sized step, so an epoch takes 200 steps of
    # 64 patches, passing over the patches several times
    features = _clustered_features(3, 64)
    config = FitConfig(embed_dim=16, common_dim=16, hidden_dim=32, epochs=3, heads=1,
                       noise_sigma=1.0).resolved()
    ensemble = train_heads(features, config)
    normal = features.reshape(-1, 16)
    noisy = normal + torch.randn(normal.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        head = ensemble.members[0]
        assert head(noisy).mean() > head(normal).mean() + 0.2
