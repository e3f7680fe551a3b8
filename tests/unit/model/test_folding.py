import pytest
import torch

from model.backbones import backbone_spec
from model.features import PatchFeatureAggregator
from model.folding import fold_head

from .conftest import randomized_head

TWO_LAYERS = ("blocks4", "blocks10")
THREE_LAYERS = ("blocks4", "blocks10", "blocks14")


@pytest.mark.parametrize(
    ("layers", "common_dim", "embed_dim", "heads", "chunk_rows"),
    [
        (TWO_LAYERS, None, 152, 3, 1024),
        (TWO_LAYERS, None, 152, 3, 50),
        (TWO_LAYERS, 112, 224, 1, 1024),
        (THREE_LAYERS, None, 344, 2, 1024),
        (THREE_LAYERS, None, 344, 2, 50),
    ],
)
def test_folded_scores_match_unfolded(layers, common_dim, embed_dim, heads, chunk_rows):
    spec = backbone_spec("efficientnet_lite0", layers)
    aggregator = PatchFeatureAggregator(spec, common_dim=common_dim, embed_dim=embed_dim)
    head = randomized_head(embed_dim=embed_dim, hidden_dim=128, heads=heads)
    grids = (12, 6, 3)
    maps = [torch.randn(3, c, g, g) * 2 for c, g in zip(spec.channels, grids, strict=False)]
    with torch.no_grad():
        features = aggregator(maps)  # [B, E, h, w]
        flat = features.permute(0, 2, 3, 1).reshape(-1, embed_dim)
        members = torch.stack([member(flat) for member in head.members])
        head.score_floor = float(members.median())  # so the floor bites on half the scores
        reference = head(flat).reshape(3, 12, 12)
        scorer = fold_head(aggregator, head)
        scorer.chunk_rows = chunk_rows  # 50 splits each image's 144 patches unevenly
        folded = scorer(maps)
    relative = (folded - reference).abs().max() / reference.abs().max()
    assert folded.shape == (3, 12, 12)
    assert relative.item() < 1e-4


def test_detector_scores_match_unfolded_path(random_detector, images):
    detector = random_detector
    batch = detector.preprocess(images)
    with torch.no_grad():
        maps = detector.backbone(batch)
        features = detector.aggregator(maps).permute(0, 2, 3, 1)
        reference = detector.head(features.reshape(-1, features.shape[-1]))
        folded = detector.score_maps(batch)
    reference = reference.reshape(folded.shape)
    assert ((folded - reference).abs().max() / reference.abs().max()).item() < 1e-4


def test_folded_scorer_runs_in_bfloat16_under_autocast():
    """The CUDA path runs the scorer under bf16 autocast; every in-place step must agree on
    one dtype. CPU autocast exercises the same code with bf16 maps."""
    spec = backbone_spec("efficientnet_lite0", TWO_LAYERS)
    aggregator = PatchFeatureAggregator(spec, common_dim=None, embed_dim=152)
    scorer = fold_head(aggregator, randomized_head(embed_dim=152, hidden_dim=128, heads=3))
    maps = [torch.randn(2, 40, 12, 12), torch.randn(2, 112, 6, 6)]
    with torch.no_grad():
        reference = scorer(maps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = scorer([layer.bfloat16() for layer in maps])
    assert low.dtype == torch.bfloat16
    relative = (low.float() - reference).abs().max() / reference.abs().max()
    assert relative.item() < 3e-2
