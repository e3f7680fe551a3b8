"""Patch features: local neighbourhood aggregation of the backbone maps, as in SimpleNet.

For each backbone map, every location's 3x3 neighbourhood is averaged (zero padding
counted, as the paper's patch-then-adaptive-average-pool does), the coarser maps are resized
bilinearly to the finer grid, every layer is projected to a common dimension and the layers
are aggregated into one ``embed_dim`` patch feature. The projection and aggregation are
parameter-free adaptive average pools over the channel axis (the paper's ``MeanMapper`` and
``Aggregator``), so the whole chain is linear: it is represented by one fixed matrix per
layer, which lets the scoring head fold everything that follows into per-layer 1x1 maps.

Pooling a layer *up* to a wider common dimension only repeats its channels, which leaves
directions of the patch feature in which no real feature ever varies. Isotropic synthetic
noise is trivially visible there, so the discriminator learns that give-away instead of the
normal data. ``common_dim=None`` therefore concatenates the layers unpooled (the Lite0
default: 40 + 112 + 192 = 344 dimensions, full rank).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.backbones import BackboneSpec
from model.metadata import check_in_map_layers

# Per-layer projection dimension per backbone; None concatenates the layers unpooled.
# Lite0's maps have 40, 112 and 192 channels. Pooling them to a common width and aggregating
# (the paper's recipe) gives a feature whose rank is the channel total, with dead
# directions that isotropic noise gives away; averaging down loses most of the wider layers
# (development split, 2 layers: image / pixel AUROC 0.79 / 0.88 against 0.94 / 0.94
# concatenated). So the EfficientNets concatenate; WideResNet50 keeps the paper's 1536.
DEFAULT_COMMON_DIM: dict[str, int | None] = {
    "efficientnet_lite0": None,
    "efficientnet_lite1": None,
    "efficientnet_lite2": None,
    "wide_resnet50_2": 1536,
}


def default_embed_dim(backbone: str, channels: tuple[int, ...], common_dim: int | None) -> int:
    """The patch feature dimension a fit uses unless told otherwise.

    Concatenated layers (``common_dim`` None) give the channel total; pooled layers the
    paper's 1536 for WideResNet50, else the common dimension times the layer count.
    """
    if common_dim is None:
        return sum(channels)
    return 1536 if backbone == "wide_resnet50_2" else common_dim * len(channels)


def adaptive_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """Matrix of ``adaptive_avg_pool1d`` from ``in_dim`` to ``out_dim`` values.

    Returns:
        ``[out_dim, in_dim]`` so that ``matrix @ x`` equals the pooled vector.
    """
    identity = torch.eye(in_dim, dtype=torch.float64).unsqueeze(1)  # [in, 1, in]
    pooled = F.adaptive_avg_pool1d(identity, out_dim).squeeze(1)  # [in, out]
    return pooled.T.contiguous()


def projection_matrices(
    channels: tuple[int, ...], common_dim: int | None, embed_dim: int
) -> list[torch.Tensor]:
    """Per-layer matrices from pooled backbone channels to the aggregated patch feature.

    Args:
        channels: Channel count of each backbone layer.
        common_dim: Dimension every layer is projected to; None concatenates the layers
            unpooled (``embed_dim`` must then be the total channel count).
        embed_dim: Dimension of the aggregated patch feature.

    Returns:
        One ``[embed_dim, channels[i]]`` float32 matrix per layer.

    Raises:
        ValueError: When ``common_dim`` is None and ``embed_dim`` is not ``sum(channels)``.
    """
    if common_dim is None:
        if embed_dim != sum(channels):
            raise ValueError(
                f"concatenated layers have {sum(channels)} dimensions, embed_dim is {embed_dim}"
            )
        identity = torch.eye(embed_dim)
        offsets = [sum(channels[:index]) for index in range(len(channels))]
        return [identity[:, o : o + c].contiguous() for o, c in zip(offsets, channels, strict=True)]
    aggregate = adaptive_pool_matrix(common_dim * len(channels), embed_dim)
    matrices = []
    for index, count in enumerate(channels):
        block = aggregate[:, index * common_dim : (index + 1) * common_dim]
        matrices.append((block @ adaptive_pool_matrix(count, common_dim)).float())
    return matrices


def neighbourhood_mean(feature_map: torch.Tensor, *, in_map_only: bool = False) -> torch.Tensor:
    """Averages every location's 3x3 neighbourhood.

    The same 3x3 on every layer. On Lite0's stride-32 layer (6 heads, development /
    synthetic checks) a 5x5 neighbourhood caught more at 1% false alarms on the synthetic
    defects (0.765 -> 0.795, the same 0.63 on the development split) but lost pixel AUROC on
    both (0.959 -> 0.949, 0.837 -> 0.818); no neighbourhood there (1x1, 2 heads) sharpened
    the development heatmaps (pixel AUROC 0.964 -> 0.975, AUPRO 0.72 -> 0.85) but lost the
    synthetic faint blotches (pixel 0.829 -> 0.817) and most of the image recall (0.57 ->
    0.39).

    At the border, SimpleNet's code counts the zeros outside the map, which shrinks a
    border cell's feature by a third (a corner's by 5/9) on every layer. ``in_map_only``
    averages the cells inside the map instead (:attr:`PatchFeatureAggregator.in_map_layers`
    chooses the layers). On every layer of the full default that sharpened the development
    heatmaps, whose defects sit mostly at the tile's edge (pixel AUROC 0.967 -> 0.980), but
    made the corner cells the good tiles' highest (a stride-32 corner then averages 4 of
    Lite0's 8 x 8 cells, not 9) and lost recall at 1% false alarms on both checks (0.720 ->
    0.605, synthetic 0.835 -> 0.665); on the stride-8 layer alone it is the default (see
    ``IN_MAP_LAYERS`` in :mod:`model.trainer`).

    The map is pooled in channels-last layout (three times faster on the CPU than the
    backbones' NCHW output, measured on Lite0's maps), which is also the layout the
    scoring GEMMs read.

    Args:
        feature_map: ``[B, C, h, w]``.
        in_map_only: Average the in-map cells of each neighbourhood only, instead of
            counting the zeros outside the map.

    Returns:
        ``[B, C, h, w]`` in channels-last memory layout.
    """
    feature_map = feature_map.contiguous(memory_format=torch.channels_last)
    return F.avg_pool2d(
        feature_map, kernel_size=3, stride=1, padding=1, count_include_pad=not in_map_only
    )


class PatchFeatureAggregator(nn.Module):
    """Turns backbone maps into ``embed_dim`` patch features on the finest grid.

    Args:
        spec: The backbone's layers.
        common_dim: Per-layer projection dimension; None concatenates the layers.
        embed_dim: Dimension of the aggregated patch feature.
        in_map_layers: How many of the finest layers average only the in-map cells of a
            border cell's 3x3 neighbourhood (:func:`neighbourhood_mean`); 0 counts the
            zeros outside the map on every layer, as SimpleNet's code.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        common_dim: int | None,
        embed_dim: int,
        in_map_layers: int = 0,
    ) -> None:
        super().__init__()
        if (common_dim is not None and common_dim < 1) or embed_dim < 1:
            raise ValueError("common_dim and embed_dim must be positive")
        check_in_map_layers(in_map_layers, len(spec.channels))
        self.common_dim = common_dim
        self.embed_dim = embed_dim
        self.in_map_layers = in_map_layers
        for index, matrix in enumerate(projection_matrices(spec.channels, common_dim, embed_dim)):
            self.register_buffer(f"projection{index}", matrix, persistent=False)

    def projections(self) -> list[torch.Tensor]:
        """Returns the per-layer ``[embed_dim, C_i]`` projection matrices."""
        return [getattr(self, f"projection{index}") for index in range(self._layer_count())]

    def _layer_count(self) -> int:
        return sum(1 for name, _ in self.named_buffers() if name.startswith("projection"))

    @staticmethod
    def pooled_layers(
        feature_maps: list[torch.Tensor], in_map_layers: int = 0
    ) -> list[torch.Tensor]:
        """Applies the 3x3 neighbourhood mean to each backbone map (each on its own grid).

        The first ``in_map_layers`` maps (the finest) average the in-map cells only at the
        border; the others count the zeros outside the map.
        """
        return [
            neighbourhood_mean(feature_map, in_map_only=index < in_map_layers)
            for index, feature_map in enumerate(feature_maps)
        ]

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Aggregates backbone maps into patch features.

        Args:
            feature_maps: Backbone maps, finest first, ``[B, C_i, h_i, w_i]``.

        Returns:
            Patch features ``[B, embed_dim, h_0, w_0]``.
        """
        pooled = self.pooled_layers(feature_maps, self.in_map_layers)
        grid = pooled[0].shape[-2:]
        total = None
        for layer, matrix in zip(pooled, self.projections(), strict=True):
            projected = torch.einsum("ec,bchw->behw", matrix.to(layer.dtype), layer)
            if projected.shape[-2:] != grid:
                projected = F.interpolate(
                    projected, size=grid, mode="bilinear", align_corners=False
                )
            total = projected if total is None else total + projected
        assert total is not None
        return total
