"""The border of the 3x3 neighbourhood mean: in-map cells only on the finest layers."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from model.artifact import load_artifact, save_artifact
from model.backbones import backbone_spec
from model.detector import AnomalyDetector
from model.errors import ArtifactError
from model.features import PatchFeatureAggregator, neighbourhood_mean
from model.folding import GraphScorer, fold_head
from model.metadata import ARTIFACT_FORMAT_VERSION, DetectorMetadata
from model.trainer import IN_MAP_LAYERS, FitConfig, fit_detector
from workers.trainer.settings import DEFAULT_LAYER_COUNTS, FitSettings

from .conftest import full_detector, make_metadata, randomized_head

THREE_LAYERS = ("blocks4", "blocks10", "blocks14")


def test_in_map_mean_averages_the_cells_inside_the_map():
    torch.manual_seed(0)
    feature_map = torch.randn(2, 5, 6, 7)
    counted = neighbourhood_mean(feature_map)
    inside = neighbourhood_mean(feature_map, in_map_only=True)
    # a corner: its 4 in-map cells, over 4 or over 9 with the zeros
    corner = feature_map[:, :, :2, :2].sum(dim=(2, 3))
    torch.testing.assert_close(inside[:, :, 0, 0], corner / 4)
    torch.testing.assert_close(counted[:, :, 0, 0], corner / 9)
    # an edge cell (not a corner): 6 in-map cells
    edge = feature_map[:, :, :2, 2:5].sum(dim=(2, 3))
    torch.testing.assert_close(inside[:, :, 0, 3], edge / 6)
    torch.testing.assert_close(counted[:, :, 0, 3], edge / 9)
    # inside the map the two are the same 3x3 mean
    torch.testing.assert_close(inside[:, :, 1:-1, 1:-1], counted[:, :, 1:-1, 1:-1])
    # a constant map stays constant only when the zeros are left out
    flat = neighbourhood_mean(torch.full((1, 1, 4, 4), 3.0), in_map_only=True)
    torch.testing.assert_close(flat, torch.full((1, 1, 4, 4), 3.0))


def test_only_the_finest_layers_leave_the_zeros_out():
    ones = [torch.ones(1, 2, side, side) for side in (8, 4, 2)]
    for count in range(4):
        pooled = PatchFeatureAggregator.pooled_layers(ones, count)
        for index, layer in enumerate(pooled):
            border_value = float(layer[0, 0, 0, 0])
            assert border_value == pytest.approx(1.0 if index < count else 4 / 9), (count, index)


@pytest.mark.parametrize("in_map_layers", [0, 1, 2, 3])
def test_folded_and_graph_scorers_pool_as_the_aggregator(in_map_layers):
    spec = backbone_spec("efficientnet_lite0", THREE_LAYERS)
    aggregator = PatchFeatureAggregator(
        spec, common_dim=None, embed_dim=344, in_map_layers=in_map_layers
    )
    head = randomized_head(embed_dim=344, hidden_dim=64, heads=2)
    torch.manual_seed(1)
    maps = [torch.randn(2, c, g, g) * 2 for c, g in zip(spec.channels, (12, 6, 3), strict=True)]
    with torch.no_grad():
        features = aggregator(maps)
        flat = features.permute(0, 2, 3, 1).reshape(-1, 344)
        reference = head(flat).reshape(2, 12, 12)
        scorer = fold_head(aggregator, head)
        folded = scorer(maps)
        graph = GraphScorer(scorer)(maps)
        zeros = PatchFeatureAggregator(spec, common_dim=None, embed_dim=344)(maps)
    assert scorer.in_map_layers == in_map_layers
    # the folded scorer and its export graph pool as the aggregator the heads trained on
    assert ((folded - reference).abs().max() / reference.abs().max()).item() < 1e-4
    assert ((graph - folded).abs().max() / folded.abs().max()).item() < 1e-4
    border = torch.ones(12, 12, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    differs = (features - zeros).norm(dim=1) > 1e-3  # [B, 12, 12]
    if in_map_layers == 0:
        assert not differs.any()
    else:
        assert differs[:, border].all()
    if in_map_layers == 1:  # only the finest grid's border cells change
        assert not differs[:, ~border].any()


def test_out_of_range_in_map_layers_are_refused_by_name():
    spec = backbone_spec("efficientnet_lite0", THREE_LAYERS)
    for bad in (-1, 4, True, 1.0):
        with pytest.raises(ValueError, match="in_map_layers"):
            PatchFeatureAggregator(spec, common_dim=None, embed_dim=344, in_map_layers=bad)
        with pytest.raises(ValueError, match="in_map_layers"):
            FitConfig(in_map_layers=bad).resolved()
    with pytest.raises(ValueError, match="in_map_layers"):
        FitConfig(layers=("blocks4", "blocks10"), in_map_layers=3).resolved()
    assert FitConfig(layers=("blocks4", "blocks10"), in_map_layers=2).resolved().in_map_layers == 2


def test_the_trainer_settings_refuse_more_layers_than_the_backbone_has():
    assert FitSettings().in_map_layers == IN_MAP_LAYERS
    for values in (
        {"in_map_layers": -1},
        {"in_map_layers": 4},  # Lite0's default layers are three
        {"backbone": "wide_resnet50_2", "in_map_layers": 3},
        {"layers": ("blocks4", "blocks10"), "in_map_layers": 3},
    ):
        with pytest.raises(ValidationError, match="in_map_layers"):
            FitSettings(**values)
    assert FitSettings(backbone="wide_resnet50_2", in_map_layers=2).in_map_layers == 2
    for name, count in DEFAULT_LAYER_COUNTS.items():  # the torch-free copy of the model's
        assert len(backbone_spec(name, None).layers) == count, name


def test_metadata_records_in_map_layers_and_older_formats_read_as_zero():
    assert ARTIFACT_FORMAT_VERSION == 8
    metadata = make_metadata(in_map_layers=2)
    assert DetectorMetadata.from_json(metadata.to_json()) == metadata
    raw = json.loads(metadata.to_json())
    del raw["in_map_layers"]
    raw["format_version"] = 7
    assert DetectorMetadata.from_json(json.dumps(raw)).in_map_layers == 0
    for bad in (-1, 4, True, "1", 1.5, None):
        raw["in_map_layers"] = bad
        with pytest.raises(ArtifactError, match="in_map_layers"):
            DetectorMetadata.from_json(json.dumps(raw))


def test_a_saved_detector_scores_with_its_own_border_rule(lite0, images, tmp_path):
    detector = full_detector(lite0, seed=4, in_map_layers=1)
    loaded = load_artifact(save_artifact(detector, tmp_path / "model.safetensors"))
    assert loaded.metadata.in_map_layers == 1
    assert loaded.aggregator.in_map_layers == loaded.scorer.in_map_layers == 1
    zeros = AnomalyDetector(
        backbone=lite0,
        head=detector.head,
        metadata=replace(detector.metadata, in_map_layers=0),
        global_gaussian=detector.global_gaussian,
        patch_memory=detector.patch_memory,
    )
    with torch.no_grad():
        batch = detector.preprocess(images)
        maps, scores = detector.score(batch)
        loaded_maps, loaded_scores = loaded.score(batch)
        zero_maps, _ = zeros.score(batch)
    torch.testing.assert_close(loaded_maps, maps)
    torch.testing.assert_close(loaded_scores, scores)
    assert not torch.allclose(zero_maps, maps, atol=1e-4)
    torch.testing.assert_close(zero_maps[:, 2:-2, 2:-2], maps[:, 2:-2, 2:-2], atol=1e-4, rtol=0)


def test_a_fit_uses_and_records_its_in_map_layers(lite0):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8) for _ in range(30)]
    config = FitConfig(
        image_size=48, heads=1, epochs=1, min_steps_per_epoch=5, hidden_dim=32,
        memory_bank_size=100, all_images_in_terms=False, second_scale=0.0,
    )
    assert config.in_map_layers == IN_MAP_LAYERS == 1
    for count in (0, 2):
        detector = fit_detector(
            images, config=replace(config, in_map_layers=count), product_line="a", backbone=lite0
        )
        assert detector.metadata.in_map_layers == count
        assert detector.aggregator.in_map_layers == detector.scorer.in_map_layers == count
