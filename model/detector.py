"""The fitted detector: backbone + folded SimpleNet head + calibration, for inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.backbones import BACKBONE_SPECS, FeatureBackbone
from model.features import PatchFeatureAggregator
from model.folding import FoldedScorer, fold_head
from model.global_gaussian import GlobalGaussian
from model.metadata import DetectorMetadata
from model.network import HeadEnsemble
from model.patch_memory import PatchMemory

HEATMAP_SIGMA = 4.0
# Grey level and spread every image is brought to when the model standardises its input
# (0..1 scale: mean 110, standard deviation 30 of 255, MTD's middle exposure).
INPUT_LEVEL, INPUT_SPREAD = 110.0 / 255.0, 30.0 / 255.0


class IntensityStandardiser(nn.Module):
    """Brings every image of a normalised batch to one mean grey level and contrast.

    Undoes the backbone's input normalisation, shifts and scales each image (over all its
    channels and pixels) to mean :data:`INPUT_LEVEL` and standard deviation
    :data:`INPUT_SPREAD`, and normalises again, so the exposure and gain of the camera no
    longer move the features (MTD photographs each tile at six exposures, mean grey 67 to
    153). Part of the detector's graph, so every runtime applies it. Full default, seeds
    0 / 1 / 2 (``bench/fit_variants.py standardise``): development recall at 1% false alarms
    .720 -> .765, .660 -> .705, about .695 -> .785; synthetic defects .835 -> .840,
    .795 -> .805, about .791 -> .845; synthetic pixel AUROC +.001 / -.008 / about -.008.
    Dividing by the mean alone (``gain``) cost the faint synthetic blotches recall.

    Args:
        mean: Per-channel input mean of the backbone (0..1 scale).
        std: Per-channel input standard deviation of the backbone (0..1 scale).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised batch -> the same, each image standardised."""
        raw = batch.float() * self.std + self.mean
        centred = raw - raw.mean(dim=(1, 2, 3), keepdim=True)
        spread = centred.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        scaled = centred * (INPUT_SPREAD / spread.clamp_min(1.0 / 255.0)) + INPUT_LEVEL
        return (scaled - self.mean) / self.std


def resize_operator(source: int, target: int) -> torch.Tensor:
    """Matrix ``R`` ``[target, source]`` of a bilinear, antialiased resize along one axis.

    PyTorch's antialiased bilinear resize runs one axis after the other with the same
    weights, so resizing a square ``X`` to ``target`` px is ``R @ X @ R.T``. ``R`` is found
    by resizing unit images with ``F.interpolate`` itself (in float32, as the images are),
    so the two agree to float32 rounding; as two matrix products the resize exports to
    every runtime (ONNX opset 17 has no antialiased resize).

    Args:
        source: Input side.
        target: Output side.

    Returns:
        ``[target, source]`` float32.
    """
    units = torch.eye(source)[:, None, :, None].expand(source, 1, source, 4).contiguous()
    resized = F.interpolate(
        units, size=(target, 4), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[:, 0, :, 0].T.contiguous()


class InputRescaler(nn.Module):
    """Resizes a square batch to the detector's second input scale (two matrix products).

    Args:
        size: Side of the input batch.
        target: Side of the output batch.
    """

    def __init__(self, size: int, target: int) -> None:
        super().__init__()
        operator = resize_operator(size, target)
        self.register_buffer("operator", operator)  # [t, S]
        self.register_buffer("operator_t", operator.T.contiguous())  # [S, t]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` -> ``[B, C, t, t]`` (bilinear, antialiased)."""
        return torch.matmul(torch.matmul(self.operator, batch), self.operator_t)


def merge_scales(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """One score map ``[B, h, w]`` from the maps of each input scale, the full scale first.

    With one scale its map; with two, the mean of the full-scale map and the second
    scale's map resized (bilinear) to the full-scale grid.
    """
    if len(maps) == 1:
        return maps[0]
    full, second = maps
    grown = F.interpolate(
        second.unsqueeze(1), size=full.shape[-2:], mode="bilinear", align_corners=False
    )
    return (full + grown.squeeze(1)) / 2


@dataclass(frozen=True)
class Prediction:
    """Result of :meth:`AnomalyDetector.predict` for a batch of ``B`` images.

    Attributes:
        scores: ``[B]`` raw image scores: max of the patch score map (SimpleNet's plus the
            memory bank's distance map when the model has one), plus the image-level Gaussian
            term when the model has one.
        normalized_scores: ``[B]`` calibrated scores; 0.5 is the decision threshold.
        labels: ``[B]`` True where the image is anomalous (normalised score >= 0.5).
        heatmaps: ``[B, S, S]`` blurred score maps on the normalised scale, ``S`` the
            model's image size.
    """

    scores: np.ndarray
    normalized_scores: np.ndarray
    labels: np.ndarray
    heatmaps: np.ndarray


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel truncated at 4 sigma (scipy's default)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float = HEATMAP_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders.

    Args:
        maps: ``[B, H, W]``.
        sigma: Standard deviation in pixels.

    Returns:
        ``[B, H, W]``.
    """
    kernel = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    mode = "reflect" if min(maps.shape[-2:]) > radius else "replicate"
    x = F.pad(x, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def upsample_and_blur(maps: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Reference heatmap: bilinear upsampling to ``size``, then :func:`gaussian_blur`.

    Args:
        maps: ``[B, h, w]`` score maps.
        size: Output ``(H, W)``.
        sigma: Blur standard deviation in output pixels.

    Returns:
        ``[B, H, W]``.
    """
    upsampled = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return gaussian_blur(upsampled.squeeze(1), sigma)


def heatmap_operators(
    grid: tuple[int, int], size: tuple[int, int], sigma: float = HEATMAP_SIGMA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices that turn a score map into its heatmap with two small matmuls.

    Bilinear upsampling and the reflect-padded Gaussian blur are both linear and act on
    each axis separately, so ``upsample_and_blur(M) == A_h @ M @ A_w.T`` for fixed
    matrices. Each column is found by running :func:`upsample_and_blur` itself (in float64)
    on a map that is one at one row (or column) and constant along the other axis: both
    steps map a constant axis to the same constant, so the result is that column times a
    constant. This replaces a full-resolution interpolation and a 33-tap convolution per
    axis by ``O(S * h * w + S * S * w)`` multiply-adds.

    Args:
        grid: Score map ``(h, w)``.
        size: Heatmap ``(H, W)``.
        sigma: Blur standard deviation in heatmap pixels.

    Returns:
        ``A_h`` ``[H, h]`` and ``A_w`` ``[W, w]``, float32.
    """
    height, width = grid
    rows = torch.eye(height, dtype=torch.float64)[:, :, None].expand(height, height, width)
    cols = torch.eye(width, dtype=torch.float64)[:, None, :].expand(width, height, width)
    operator_h = upsample_and_blur(rows, size, sigma)[:, :, 0].T  # [H, h]
    operator_w = upsample_and_blur(cols, size, sigma)[:, 0, :].T  # [W, w]
    return operator_h.float().contiguous(), operator_w.float().contiguous()


def images_to_tensor(
    images: Sequence[np.ndarray], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resizes and normalises uint8 images into a batch.

    Args:
        images: ``HxWx3`` RGB or ``HxW`` grayscale uint8 arrays, any sizes.
        image_size: Output side ``S``.
        mean: Per-channel mean on the 0..1 scale.
        std: Per-channel std on the 0..1 scale.

    Returns:
        ``[B, 3, S, S]`` float32.

    Raises:
        ValueError: On an empty list or an array that is not an image.
    """
    if len(images) == 0:
        raise ValueError("no images given")
    batch = []
    for index, image in enumerate(images):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"image {index} has dtype {array.dtype}, expected uint8")
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 8:
            raise ValueError(f"image {index} has shape {array.shape}, expected HxWx3 (>= 8 px)")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
        if tensor.shape[1:] != (image_size, image_size):
            tensor = F.interpolate(
                tensor[None],
                size=(image_size, image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
        batch.append(tensor)
    stacked = torch.stack(batch).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (stacked - mean_t) / std_t


class AnomalyDetector(nn.Module):
    """A fitted SimpleNet detector, ready for batched inference.

    Built in one step from its parts; the head is folded on construction.

    Args:
        backbone: Frozen backbone matching ``metadata.backbone``.
        head: Trained heads (kept for saving; inference uses the fold).
        metadata: Model description, including calibration.
        global_gaussian: The image-level Gaussian term, present exactly when
            ``metadata.global_gaussian`` is (same center, weight and dimensions).
        patch_memory: The nearest-neighbour map term, present exactly when
            ``metadata.patch_memory`` is (same center, weight, size and dimensions).
    """

    def __init__(
        self,
        *,
        backbone: FeatureBackbone,
        head: HeadEnsemble,
        metadata: DetectorMetadata,
        global_gaussian: GlobalGaussian | None = None,
        patch_memory: PatchMemory | None = None,
    ) -> None:
        super().__init__()
        if (backbone.spec.name, backbone.spec.layers) != (metadata.backbone, metadata.layers):
            raise ValueError(
                f"backbone {backbone.spec.name} {backbone.spec.layers} != metadata "
                f"{metadata.backbone} {metadata.layers}"
            )
        if len(head.members) != metadata.heads or head.score_floor != -metadata.margin:
            raise ValueError(
                f"{len(head.members)} heads floored at {head.score_floor} != metadata "
                f"{metadata.heads} heads with margin {metadata.margin}"
            )
        term, memory_term = metadata.global_gaussian, metadata.patch_memory
        stated = None if term is None else (term.center, term.weight, term.dims)
        given = None if global_gaussian is None else (
            global_gaussian.center, global_gaussian.weight, global_gaussian.mean.shape[0]
        )
        if stated != given or (term is not None and term.dims != sum(backbone.spec.channels)):
            raise ValueError("the global Gaussian term does not match the metadata's")
        stated = None if memory_term is None else (
            memory_term.center, memory_term.weight, memory_term.size, memory_term.dims
        )
        given = None if patch_memory is None else (
            patch_memory.center, patch_memory.weight, *patch_memory.bank.shape
        )
        if stated != given or (memory_term is not None and memory_term.dims != metadata.embed_dim):
            raise ValueError("the patch memory does not match the metadata's")
        self.backbone = backbone
        spec = BACKBONE_SPECS[metadata.backbone]
        self.standardiser = (
            IntensityStandardiser(spec.mean, spec.std) if metadata.input_standardisation else None
        )
        self.rescaler = (
            InputRescaler(metadata.image_size, metadata.second_image_size)
            if metadata.second_image_size is not None
            else None
        )
        self.global_gaussian = global_gaussian
        self.patch_memory = patch_memory
        self.aggregator = PatchFeatureAggregator(
            backbone.spec,
            common_dim=metadata.common_dim,
            embed_dim=metadata.embed_dim,
            in_map_layers=metadata.in_map_layers,
        )
        self.head = head.eval()
        self.metadata = metadata
        self.scorer: FoldedScorer = fold_head(self.aggregator, self.head)
        self._heatmap_operators: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.eval()

    @property
    def device(self) -> torch.device:
        """Device the detector's tensors live on."""
        return self.scorer.hidden_bias.device

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images -> normalised ``[B, 3, S, S]`` batch on the detector's device."""
        spec = BACKBONE_SPECS[self.metadata.backbone]
        batch = images_to_tensor(images, self.metadata.image_size, spec.mean, spec.std)
        return batch.to(self.device, non_blocking=True)

    def scale_maps(
        self, batch: torch.Tensor, *, cuda_dtype: torch.dtype | None = None
    ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Backbone maps and float32 SimpleNet maps at each input scale, the full one first.

        The batch is standardised first when the model does so; a model with a second input
        scale also runs the backbone on the batch resized to it (:class:`InputRescaler`).
        On CUDA the backbone and the folded head run under autocast (bfloat16, or float16
        without bfloat16 support).

        Args:
            batch: ``[B, 3, S, S]`` normalised images on the detector's device.
            cuda_dtype: On CUDA, the autocast dtype instead of the default one;
                ``torch.float32`` runs without autocast. Ignored on the CPU.
        """
        if self.standardiser is not None:
            batch = self.standardiser(batch)
        batches = [batch] if self.rescaler is None else [batch, self.rescaler(batch)]
        autocast = nullcontext()
        if batch.device.type == "cuda" and cuda_dtype != torch.float32:
            dtype = cuda_dtype or (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            )
            autocast = torch.autocast("cuda", dtype=dtype)
        with autocast:
            layer_maps = [self.backbone(scaled) for scaled in batches]
            maps = [self.scorer(layers) for layers in layer_maps]
        return layer_maps, [scale_map.float() for scale_map in maps]

    def score_terms(
        self,
        batch: torch.Tensor,
        distances: Callable[[torch.Tensor], torch.Tensor] | None,
        *,
        cuda_dtype: torch.dtype | None = None,
    ) -> tuple[list[list[torch.Tensor]], torch.Tensor, torch.Tensor | None]:
        """Backbone maps per scale and the two map terms, each merged over the scales.

        The one definition of the score map's terms, for inference
        (:meth:`backbone_and_score_maps`) and for the fit's held-out calibration, which
        scales an unscaled memory term on them.

        Args:
            batch: ``[B, 3, S, S]`` normalised images on the detector's device.
            distances: Patch features ``[B, D, h, w]`` -> distance maps ``[B, h, w]`` (a
                patch memory, scaled or not), or None; run in float32.
            cuda_dtype: As :meth:`scale_maps`.

        Returns:
            The backbone maps of each scale (full first), the SimpleNet map and the
            distance map (or None), both ``[B, h, w]`` float32 on the full grid
            (:func:`merge_scales`).
        """
        layer_maps, maps = self.scale_maps(batch, cuda_dtype=cuda_dtype)
        if distances is None:
            return layer_maps, merge_scales(maps), None
        scale_distances = [
            distances(self.aggregator([layer.float() for layer in layers]))
            for layers in layer_maps
        ]
        return layer_maps, merge_scales(maps), merge_scales(scale_distances)

    def backbone_and_score_maps(
        self, batch: torch.Tensor, *, cuda_dtype: torch.dtype | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Full-scale backbone maps and float32 patch score maps ``[B, h, w]`` of a batch.

        The folded SimpleNet map plus, when the model has one, the patch memory's distance
        map, each merged over the input scales (:meth:`score_terms`).

        Args:
            batch: ``[B, 3, S, S]`` normalised images on the detector's device.
            cuda_dtype: As :meth:`scale_maps`.
        """
        layer_maps, maps, memory = self.score_terms(
            batch, self.patch_memory, cuda_dtype=cuda_dtype
        )
        return layer_maps[0], maps if memory is None else maps + memory

    def score(
        self, batch: torch.Tensor, *, cuda_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw patch score maps ``[B, h, w]`` and image scores ``[B]`` of a normalised batch.

        The image score is the map's max plus, when the model has one, the global Gaussian
        term (computed in float32). ``cuda_dtype``: as :meth:`backbone_and_score_maps`.
        """
        layer_maps, maps = self.backbone_and_score_maps(batch, cuda_dtype=cuda_dtype)
        scores = maps.flatten(1).amax(dim=1)
        if self.global_gaussian is not None:
            scores = scores + self.global_gaussian(layer_maps)
        return maps, scores

    def score_maps(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw patch score maps ``[B, h, w]`` for a normalised batch ``[B, 3, S, S]``."""
        return self.score(batch)[0]

    def heatmaps(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw heatmaps ``[B, S, S]``: score maps ``[B, h, w]`` upsampled and blurred.

        Equal to :func:`upsample_and_blur` with sigma :data:`HEATMAP_SIGMA`, computed as
        ``A_h @ maps @ A_w.T`` with operators built once per grid and device.
        """
        size = self.metadata.image_size
        key = (*maps.shape[-2:], maps.device, maps.dtype)
        operators = self._heatmap_operators.get(key)
        if operators is None:
            operator_h, operator_w = heatmap_operators(tuple(maps.shape[-2:]), (size, size))
            operators = (
                operator_h.to(maps.device, maps.dtype),
                operator_w.T.contiguous().to(maps.device, maps.dtype),
            )
            self._heatmap_operators[key] = operators
        operator_h, operator_w_t = operators
        return torch.matmul(torch.matmul(operator_h, maps), operator_w_t)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], *, chunk_size: int = 32) -> Prediction:
        """Scores images and builds their heatmaps.

        Args:
            images: ``HxWx3`` RGB (or ``HxW`` grayscale) uint8 arrays of any size.
            chunk_size: Most images run through the network at once.

        Returns:
            The batch's :class:`Prediction`.
        """
        calibration = self.metadata.calibration
        scores, heatmaps = [], []
        for start in range(0, len(images), chunk_size):
            batch = self.preprocess(images[start : start + chunk_size])
            maps, image_scores = self.score(batch)
            scores.append(image_scores)
            heatmaps.append(calibration.normalize(self.heatmaps(maps)))
        raw = torch.cat(scores).float().cpu().numpy()
        normalized = np.asarray(calibration.normalize(raw), dtype=np.float32)
        return Prediction(
            scores=raw,
            normalized_scores=normalized,
            labels=normalized >= 0.5,
            heatmaps=torch.cat(heatmaps).float().cpu().numpy(),
        )

    def warm_up(self, batch_size: int = 1) -> None:
        """Runs one dummy batch so the first real batch does not pay start-up costs."""
        size = self.metadata.image_size
        self.predict([np.zeros((size, size, 3), dtype=np.uint8)] * batch_size)
