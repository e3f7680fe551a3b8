"""Folding of the linear chain before the discriminator's activation into per-layer 1x1 maps.

Everything between the backbone maps and the LeakyReLU is linear: 3x3 neighbourhood mean,
bilinear resize, channel projection and aggregation, the feature adaptor, the
discriminator's first linear layer and (in eval mode) its BatchNorm. With ``D`` the
BatchNorm scale, ``W`` the first linear layer and ``A`` the adaptor, the pre-activation of
a patch is ``D W A (P_0 m_0 + up(P_1 m_1)) + c``. Folding precomputes ``M_i = D W A P_i``
so each layer costs one 1x1 map from its own (few) channels to the hidden width, and the
coarse layer is mapped on its own grid before the (linear) bilinear resize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.features import PatchFeatureAggregator
from model.network import SimpleNetHead


class FoldedScorer(nn.Module):
    """Patch anomaly scores straight from backbone maps, with the linear chain folded.

    Args:
        layer_weights: One ``[hidden, C_i]`` matrix per backbone layer, finest first.
        hidden_bias: ``[hidden]`` bias of the folded pre-activation.
        output_weight: ``[hidden]`` weights of the discriminator's last layer.
        output_bias: Scalar bias of the discriminator's last layer.
        negative_slope: LeakyReLU slope.
    """

    def __init__(
        self,
        layer_weights: list[torch.Tensor],
        hidden_bias: torch.Tensor,
        output_weight: torch.Tensor,
        output_bias: torch.Tensor,
        negative_slope: float,
    ) -> None:
        super().__init__()
        self.layer_count = len(layer_weights)
        for index, weight in enumerate(layer_weights):
            self.register_buffer(f"weight{index}", weight.detach().clone().contiguous())
        self.register_buffer("hidden_bias", hidden_bias.detach().clone())
        self.register_buffer("output_weight", output_weight.detach().clone().reshape(1, -1, 1, 1))
        self.register_buffer("output_bias", output_bias.detach().clone().reshape(1))
        self.negative_slope = negative_slope

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Scores every patch.

        Args:
            feature_maps: Backbone maps, finest first, ``[B, C_i, h_i, w_i]``.

        Returns:
            Anomaly scores ``[B, h_0, w_0]``.
        """
        pooled = PatchFeatureAggregator.pooled_layers(feature_maps)
        grid = pooled[0].shape[-2:]
        hidden = None
        for index, layer in enumerate(pooled):
            weight = getattr(self, f"weight{index}").to(layer.dtype)
            mapped = F.conv2d(layer, weight[:, :, None, None])
            if mapped.shape[-2:] != grid:
                mapped = F.interpolate(mapped, size=grid, mode="bilinear", align_corners=False)
            hidden = mapped if hidden is None else hidden.add_(mapped)
        assert hidden is not None
        hidden = hidden.add_(self.hidden_bias.to(hidden.dtype)[None, :, None, None])
        hidden = F.leaky_relu_(hidden, self.negative_slope)
        logits = F.conv2d(hidden, self.output_weight.to(hidden.dtype)).squeeze(1)
        return -(logits + self.output_bias.to(hidden.dtype))


@torch.no_grad()
def fold_head(aggregator: PatchFeatureAggregator, head: SimpleNetHead) -> FoldedScorer:
    """Folds aggregator projections, adaptor, first linear layer and BatchNorm.

    The fold is computed in float64 and stored in float32.

    Args:
        aggregator: The patch feature aggregator (fixed projection matrices).
        head: Trained head; its BatchNorm running statistics are used (eval semantics).

    Returns:
        The equivalent :class:`FoldedScorer`.
    """
    adaptor = head.adaptor.linear
    discriminator = head.discriminator
    norm = discriminator.norm
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    first = discriminator.hidden.weight.double()  # [hidden, E]
    combined = scale[:, None] * (first @ adaptor.weight.double())  # [hidden, E]
    bias = (
        scale
        * (
            first @ adaptor.bias.double()
            + discriminator.hidden.bias.double()
            - norm.running_mean.double()
        )
        + norm.bias.double()
    )
    layer_weights = [(combined @ matrix.double()).float() for matrix in aggregator.projections()]
    return FoldedScorer(
        layer_weights,
        bias.float(),
        discriminator.output.weight.double().reshape(-1).float(),
        discriminator.output.bias.double().float(),
        discriminator.activation.negative_slope,
    )
