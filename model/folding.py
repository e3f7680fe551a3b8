"""Folding of the linear chain before the discriminator's activation into per-layer 1x1 maps.

Everything between the backbone maps and the LeakyReLU is linear: 3x3 neighbourhood mean,
bilinear resize, channel projection and aggregation, the feature adaptor, the
discriminator's first linear layer and (in eval mode) its BatchNorm. With ``D`` the
BatchNorm scale, ``W`` the first linear layer and ``A`` the adaptor, the pre-activation of
a patch is ``D W A (P_0 m_0 + up(P_1 m_1)) + c``. Folding precomputes ``M_i = D W A P_i``
so inference costs one GEMM from the few pooled backbone channels (40 + 112 for Lite0)
to the hidden width of all ensemble members side by side; the coarse layer's pooled
channels are resized before the GEMM (resizing commutes with the per-location linear map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.features import PatchFeatureAggregator
from model.network import HeadEnsemble


class FoldedScorer(nn.Module):
    """Patch anomaly scores straight from backbone maps, with the linear chain folded.

    The pooled coarse maps are resized to the finest grid first (bilinear resizing commutes
    with the per-location linear map, and resizing a few channels is far cheaper than
    resizing the hidden width), then all layers go through one GEMM per chunk of patches
    into the hidden units of all ``K`` members, the LeakyReLU and one matrix-vector product
    per member (far faster than a skinny ``K``-column GEMM), chunked so the hidden
    activations stay in cache. Each member's score is floored and the members are
    averaged, as :class:`HeadEnsemble` does.

    Args:
        layer_weights: One ``[K * hidden, C_i]`` matrix per backbone layer, finest first.
        hidden_bias: ``[K * hidden]`` bias of the folded pre-activations.
        output_weight: ``[K, hidden]`` weights of the members' last layers.
        output_bias: ``[K]`` biases of the members' last layers.
        negative_slope: LeakyReLU slope.
        score_floor: Lower bound of each member's patch score.
        chunk_rows: Patches per GEMM on the CPU (the whole batch at once on CUDA).
    """

    def __init__(
        self,
        layer_weights: list[torch.Tensor],
        hidden_bias: torch.Tensor,
        output_weight: torch.Tensor,
        output_bias: torch.Tensor,
        negative_slope: float,
        score_floor: float,
        chunk_rows: int = 512,
    ) -> None:
        super().__init__()
        self.layer_channels = tuple(int(weight.shape[1]) for weight in layer_weights)
        weight = torch.cat([w.detach() for w in layer_weights], dim=1)  # [K*hidden, sum C_i]
        self.register_buffer("weight_t", weight.T.contiguous())  # [sum C_i, K*hidden]
        self.register_buffer("hidden_bias", hidden_bias.detach().clone())
        members = int(output_weight.shape[0])
        self.register_buffer("output_weight", output_weight.detach().clone())  # [K, hidden]
        self.register_buffer("output_bias", output_bias.detach().clone().reshape(members))
        self.negative_slope = negative_slope
        self.score_floor = float(score_floor)
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
        output_bias = self.output_bias.to(dtype)
        hidden_width = output_weight.shape[1]
        chunk = rows.shape[0] if rows.is_cuda else self.chunk_rows
        scores = torch.empty(rows.shape[0], dtype=dtype, device=rows.device)
        for start in range(0, rows.shape[0], chunk):
            hidden = torch.addmm(bias, rows[start : start + chunk], weight_t)
            hidden = F.leaky_relu_(hidden, self.negative_slope)
            logits = torch.stack(
                [
                    hidden[:, k * hidden_width : (k + 1) * hidden_width] @ output_weight[k]
                    for k in range(output_weight.shape[0])
                ],
                dim=1,
            )  # [chunk, K]
            logits = logits + output_bias
            scores[start : start + chunk] = logits.neg_().clamp_min_(self.score_floor).mean(1)
        return scores.reshape(batch, height, width)


@torch.no_grad()
def fold_head(aggregator: PatchFeatureAggregator, ensemble: HeadEnsemble) -> FoldedScorer:
    """Folds aggregator projections, adaptors, first linear layers and BatchNorms.

    The fold is computed in float64 and stored in float32.

    Args:
        aggregator: The patch feature aggregator (fixed projection matrices).
        ensemble: Trained heads; their BatchNorm running statistics are used (eval
            semantics).

    Returns:
        The equivalent :class:`FoldedScorer`.
    """
    weights, biases, outputs, output_biases = [], [], [], []
    for head in ensemble.members:
        adaptor = head.adaptor.linear
        discriminator = head.discriminator
        norm = discriminator.norm
        scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
        first = discriminator.hidden.weight.double()  # [hidden, E]
        weights.append(scale[:, None] * (first @ adaptor.weight.double()))  # [hidden, E]
        biases.append(
            scale
            * (
                first @ adaptor.bias.double()
                + discriminator.hidden.bias.double()
                - norm.running_mean.double()
            )
            + norm.bias.double()
        )
        outputs.append(discriminator.output.weight.double().reshape(-1))
        output_biases.append(discriminator.output.bias.double().reshape(()))
    combined = torch.cat(weights)  # [K * hidden, E]
    layer_weights = [(combined @ matrix.double()).float() for matrix in aggregator.projections()]
    return FoldedScorer(
        layer_weights,
        torch.cat(biases).float(),
        torch.stack(outputs).float(),
        torch.stack(output_biases).float(),
        ensemble.members[0].discriminator.activation.negative_slope,
        ensemble.score_floor,
    )
