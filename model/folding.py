"""Folding of the linear chain before the discriminator's activation into per-layer 1x1 maps.

Everything between the backbone maps and the LeakyReLU is linear: 3x3 neighbourhood mean,
bilinear resize, channel projection and aggregation, the feature adaptor, the
discriminator's first linear layer and (in eval mode) its BatchNorm. With ``D`` the
BatchNorm scale, ``W`` the first linear layer and ``A`` the adaptor, the pre-activation of
a patch is ``D W A (P_0 m_0 + up(P_1 m_1)) + c``. Folding precomputes ``M_i = D W A P_i``
so inference costs one GEMM from the few pooled backbone channels (40 + 112 for Lite0)
to the hidden width; the coarse layer's pooled channels are resized before the GEMM
(resizing commutes with the per-location linear map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.features import PatchFeatureAggregator
from model.network import SimpleNetHead


class FoldedScorer(nn.Module):
    """Patch anomaly scores straight from backbone maps, with the linear chain folded.

    The pooled coarse maps are resized to the finest grid first (bilinear resizing commutes
    with the per-location linear map, and resizing a few channels is far cheaper than
    resizing the hidden width), then all layers go through one GEMM per chunk of patches,
    the LeakyReLU and the output dot product, chunked so the hidden activations stay in
    cache.

    Args:
        layer_weights: One ``[hidden, C_i]`` matrix per backbone layer, finest first.
        hidden_bias: ``[hidden]`` bias of the folded pre-activation.
        output_weight: ``[hidden]`` weights of the discriminator's last layer.
        output_bias: Scalar bias of the discriminator's last layer.
        negative_slope: LeakyReLU slope.
        chunk_rows: Patches per GEMM on the CPU (the whole batch at once on CUDA).
    """

    def __init__(
        self,
        layer_weights: list[torch.Tensor],
        hidden_bias: torch.Tensor,
        output_weight: torch.Tensor,
        output_bias: torch.Tensor,
        negative_slope: float,
        chunk_rows: int = 1024,
    ) -> None:
        super().__init__()
        self.layer_channels = tuple(int(weight.shape[1]) for weight in layer_weights)
        weight = torch.cat([w.detach() for w in layer_weights], dim=1)  # [hidden, sum C_i]
        self.register_buffer("weight_t", weight.T.contiguous())  # [sum C_i, hidden]
        self.register_buffer("hidden_bias", hidden_bias.detach().clone())
        self.register_buffer("output_weight", output_weight.detach().clone().reshape(-1))
        self.register_buffer("output_bias", output_bias.detach().clone().reshape(1))
        self.negative_slope = negative_slope
        self.chunk_rows = chunk_rows

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Scores every patch.

        Args:
            feature_maps: Backbone maps, finest first, ``[B, C_i, h_i, w_i]``.

        Returns:
            Anomaly scores ``[B, h_0, w_0]``.
        """
        pooled = PatchFeatureAggregator.pooled_layers(feature_maps)
        batch, _, height, width = pooled[0].shape
        aligned = [pooled[0]]
        for layer in pooled[1:]:
            if layer.shape[-2:] != (height, width):
                layer = F.interpolate(
                    layer.contiguous(memory_format=torch.channels_last),
                    size=(height, width),
                    mode="bilinear",
                    align_corners=False,
                )
            aligned.append(layer)
        rows = torch.cat(aligned, dim=1).permute(0, 2, 3, 1).reshape(-1, self.weight_t.shape[0])
        dtype = rows.dtype
        weight_t = self.weight_t.to(dtype)
        bias = self.hidden_bias.to(dtype)
        output_weight = self.output_weight.to(dtype)
        chunk = rows.shape[0] if rows.is_cuda else self.chunk_rows
        logits = torch.empty(rows.shape[0], dtype=dtype, device=rows.device)
        for start in range(0, rows.shape[0], chunk):
            hidden = torch.addmm(bias, rows[start : start + chunk], weight_t)
            hidden = F.leaky_relu_(hidden, self.negative_slope)
            logits[start : start + chunk] = hidden @ output_weight
        logits = logits + self.output_bias.to(dtype)
        return -logits.reshape(batch, height, width)


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
