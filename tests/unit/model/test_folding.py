import torch

from model.backbones import BACKBONE_SPECS
from model.features import PatchFeatureAggregator
from model.folding import fold_head

from .conftest import randomized_head


def test_folded_scores_match_unfolded():
    spec = BACKBONE_SPECS["efficientnet_lite0"]
    aggregator = PatchFeatureAggregator(spec, common_dim=112, embed_dim=224)
    head = randomized_head(hidden_dim=128)
    maps = [torch.randn(3, 40, 12, 12) * 2, torch.randn(3, 112, 6, 6) * 2]
    with torch.no_grad():
        features = aggregator(maps)  # [B, E, h, w]
        flat = features.permute(0, 2, 3, 1).reshape(-1, 224)
        reference = head(flat).reshape(3, 12, 12)
        folded = fold_head(aggregator, head)(maps)
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
