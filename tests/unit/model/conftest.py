import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.detector import AnomalyDetector
from model.global_gaussian import GlobalGaussian
from model.metadata import Calibration, DetectorMetadata, GlobalGaussianTerm, PatchMemoryTerm
from model.network import HeadEnsemble, SimpleNetHead
from model.patch_memory import PatchMemory
from model.trainer import IN_MAP_LAYERS


@pytest.fixture(scope="session")
def lite0():
    return build_backbone("efficientnet_lite0")


def make_metadata(**overrides) -> DetectorMetadata:
    values = dict(
        version="20260101T000000Z-deadbeef",
        product_line="line-a",
        backbone="efficientnet_lite0",
        layers=("blocks4", "blocks10", "blocks14"),
        image_size=64,
        common_dim=None,
        embed_dim=344,
        hidden_dim=64,
        heads=2,
        margin=0.5,
        noise_sigma=0.25,
        feature_scale=2.0,
        epochs=1,
        calibration=Calibration(
            center=-1.0,
            threshold=0.0,
            target_false_alarm_rate=0.01,
            estimated_false_alarm_rate=0.01,
        ),
        calibration_scores=(0.1, 0.2),
        train_image_count=4,
        holdout_image_count=2,
        train_fingerprint="0" * 64,
        created_at="2026-01-01T00:00:00+00:00",
        code_version="test",
    )
    values.update(overrides)
    return DetectorMetadata(**values)


def randomized_head(
    embed_dim: int = 344, hidden_dim: int = 64, seed: int = 0, heads: int = 2
) -> HeadEnsemble:
    """An ensemble of untrained heads with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    members = []
    for _ in range(heads):
        head = SimpleNetHead(embed_dim, hidden_dim)
        norm = head.discriminator.norm
        with torch.no_grad():
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
        members.append(head)
    return HeadEnsemble(members, score_floor=-0.5).eval()


def random_gaussian(dims: int = 344, seed: int = 0) -> tuple[GlobalGaussian, GlobalGaussianTerm]:
    """A global Gaussian term with a random mean and whitening, and its metadata."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(dims, generator=generator) * 0.1
    whitening = torch.tril(torch.randn(dims, dims, generator=generator)) * 0.05
    term = GlobalGaussianTerm(center=3.0, weight=0.05, shrinkage=0.2, dims=dims)
    return GlobalGaussian(mean, whitening, center=term.center, weight=term.weight), term


def random_memory(
    size: int = 50, dims: int = 344, seed: int = 0
) -> tuple[PatchMemory, PatchMemoryTerm]:
    """A patch memory with a random bank, and its metadata."""
    generator = torch.Generator().manual_seed(seed + 100)
    bank = torch.randn(size, dims, generator=generator)
    term = PatchMemoryTerm(center=20.0, weight=0.02, size=size, dims=dims)
    return PatchMemory(bank, center=term.center, weight=term.weight), term


def full_detector(
    backbone,
    image_size: int = 64,
    seed: int = 0,
    second_image_size: int | None = -1,
    in_map_layers: int = IN_MAP_LAYERS,
) -> AnomalyDetector:
    """A random detector with a random patch memory and a random global Gaussian term.

    It standardises its input and, as a default fit does, also scores a second input scale
    (``second_image_size``; -1: three quarters of ``image_size``, None: one scale) and
    averages the in-map cells only at the border of its finest ``in_map_layers`` layers.
    """
    if second_image_size == -1:
        second_image_size = round(0.75 * image_size)
    gaussian, term = random_gaussian(seed=seed)
    memory, memory_term = random_memory(seed=seed)
    return AnomalyDetector(
        backbone=backbone,
        head=randomized_head(seed=seed),
        metadata=make_metadata(
            image_size=image_size,
            global_gaussian=term,
            patch_memory=memory_term,
            input_standardisation=True,
            second_image_size=second_image_size,
            in_map_layers=in_map_layers,
        ),
        global_gaussian=gaussian,
        patch_memory=memory,
    )


def two_scale_reference(
    detector: AnomalyDetector, batch: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """A two-scale detector's maps rebuilt from ``F.interpolate`` itself.

    Returns:
        Each scale's SimpleNet + memory map (full scale first), their mean on the full grid
        (the second resized bilinearly) and the Gaussian term of the full scale.
    """
    import torch.nn.functional as F  # noqa: N812

    second = detector.metadata.second_image_size
    standardised = detector.standardiser(batch)
    small = F.interpolate(
        standardised, size=(second, second), mode="bilinear", align_corners=False, antialias=True
    )
    per_scale = []
    for scaled in (standardised, small):
        layer_maps = detector.backbone(scaled)
        per_scale.append(
            detector.scorer(layer_maps) + detector.patch_memory(detector.aggregator(layer_maps))
        )
    grown = F.interpolate(per_scale[1][:, None], size=per_scale[0].shape[-2:], mode="bilinear")
    term = detector.global_gaussian(detector.backbone(standardised))
    return per_scale, (per_scale[0] + grown[:, 0]) / 2, term


@pytest.fixture()
def random_detector(lite0) -> AnomalyDetector:
    return AnomalyDetector(backbone=lite0, head=randomized_head(), metadata=make_metadata())


@pytest.fixture()
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(48 + 8 * i, 80, 3), dtype=np.uint8) for i in range(3)]
