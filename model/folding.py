"""Folding of the linear chain before the discriminator's activation into per-layer 1x1 maps.

Everything between the backbone maps and the LeakyReLU is linear: 3x3 neighbourhood mean,
bilinear resize, channel projection and aggregation, the feature adaptor, the
discriminator's first linear layer and (in eval mode) its BatchNorm. With ``D`` the
BatchNorm scale, ``W`` the first linear layer and ``A`` the adaptor, the pre-activation of
a patch is ``D W A (P_0 m_0 + up(P_1 m_1)) + c``. Folding precomputes ``M_i = D W A P_i``
so inference costs one GEMM per layer from its few pooled backbone channels (40 and 112 for
Lite0) to the hidden width of all ensemble members side by side; the coarse layer's GEMM
runs on its own grid and its output is resized (resizing commutes with the per-location
linear map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.features import PatchFeatureAggregator
from model.metadata import check_in_map_layers
from model.network import HeadEnsemble


class FoldedScorer(nn.Module):
    """Patch anomaly scores straight from backbone maps, with the linear chain folded.

    Each layer has its own folded ``[C_i, K * hidden]`` map into the hidden units of all
    ``K`` members side by side. A coarser layer goes through its map on its own grid and
    only then is resized to the finest grid: bilinear resizing commutes with the
    per-location linear map, and the GEMM then runs on a quarter of the rows (the Lite0
    stride-16 layer holds 112 of the 152 input channels; WideResNet50's layer3 1024 of
    1536). The finest layer's GEMM accumulates in place into the resized coarse part,
    followed by the LeakyReLU and one matrix-vector product per member (far faster than a
    skinny ``K``-column GEMM). On the CPU this runs one image at a time in chunks of rows, so
    the hidden activations stay in cache; on CUDA the whole batch at once. Each member's
    score is floored and the members are averaged, as :class:`HeadEnsemble` does.

    Args:
        layer_weights: One ``[K * hidden, C_i]`` matrix per backbone layer, finest first.
        hidden_bias: ``[K * hidden]`` bias of the folded pre-activations.
        output_weight: ``[K, hidden]`` weights of the members' last layers.
        output_bias: ``[K]`` biases of the members' last layers.
        negative_slope: LeakyReLU slope.
        score_floor: Lower bound of each member's patch score.
        chunk_rows: Patches per GEMM on the CPU (the whole batch at once on CUDA).
        in_map_layers: The aggregator's
            :attr:`~model.features.PatchFeatureAggregator.in_map_layers`.
    """

    def __init__(
        self,
        layer_weights: list[torch.Tensor],
        hidden_bias: torch.Tensor,
        output_weight: torch.Tensor,
        output_bias: torch.Tensor,
        negative_slope: float,
        score_floor: float,
        chunk_rows: int = 1024,
        in_map_layers: int = 0,
    ) -> None:
        super().__init__()
        check_in_map_layers(in_map_layers, len(layer_weights))
        self.in_map_layers = in_map_layers
        self.layer_count = len(layer_weights)
        for index, weight in enumerate(layer_weights):
            # [C_i, K * hidden], so each GEMM reads rows of patches times a row-major matrix.
            self.register_buffer(f"weight{index}_t", weight.detach().T.contiguous())
        self.register_buffer("hidden_bias", hidden_bias.detach().clone())
        members = int(output_weight.shape[0])
        self.register_buffer("output_weight", output_weight.detach().clone())  # [K, hidden]
        self.register_buffer("output_bias", output_bias.detach().clone().reshape(members))
        self.negative_slope = negative_slope
        self.score_floor = float(score_floor)
        self.chunk_rows = chunk_rows

    def layer_weights_t(self) -> list[torch.Tensor]:
        """Returns the per-layer folded ``[C_i, K * hidden]`` matrices, finest first."""
        return [getattr(self, f"weight{index}_t") for index in range(self.layer_count)]

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Scores every patch.

        Args:
            feature_maps: Backbone maps, finest first, ``[B, C_i, h_i, w_i]``.

        Returns:
            Anomaly scores ``[B, h_0, w_0]``.
        """
        pooled = PatchFeatureAggregator.pooled_layers(feature_maps, self.in_map_layers)
        batch, _, height, width = pooled[0].shape
        dtype = pooled[0].dtype
        weights = [weight.to(dtype) for weight in self.layer_weights_t()]
        finest = pooled[0].permute(0, 2, 3, 1).reshape(batch, height * width, -1)
        group = batch if pooled[0].is_cuda else 1
        chunk = group * height * width if pooled[0].is_cuda else self.chunk_rows
        scores = torch.empty(batch, height * width, dtype=dtype, device=pooled[0].device)
        for first in range(0, batch, group):
            images = slice(first, first + group)
            rows = finest[images].reshape(-1, finest.shape[-1])
            # [group * h * w, K * hidden]: bias plus every coarser layer's share.
            hidden_all = self._coarse_hidden(
                pooled[1:], weights[1:], images, (height, width), rows.shape[0], dtype
            )
            image_scores = scores[images].view(-1)
            for start in range(0, rows.shape[0], chunk):
                hidden = hidden_all[start : start + chunk].addmm_(
                    rows[start : start + chunk], weights[0]
                )
                image_scores[start : start + chunk] = self._member_mean(hidden)
        return scores.reshape(batch, height, width)

    def _coarse_hidden(
        self,
        layers: list[torch.Tensor],
        weights: list[torch.Tensor],
        images: slice,
        grid: tuple[int, int],
        patches: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Bias plus the coarser layers' folded contributions, resized to ``grid``.

        Returns:
            A fresh ``[patches, K * hidden]`` tensor (``patches`` = images x ``grid``
            cells), rows in (image, y, x) order.
        """
        bias = self.hidden_bias.to(dtype)
        total: torch.Tensor | None = None
        for layer, weight in zip(layers, weights, strict=True):
            part = layer[images]
            count, channels, layer_height, layer_width = part.shape
            rows = part.permute(0, 2, 3, 1).reshape(-1, channels)
            hidden = torch.addmm(bias, rows, weight) if total is None else rows @ weight
            # A channels-last view: resizing it keeps the (image, y, x) row layout.
            hidden = hidden.view(count, layer_height, layer_width, -1).permute(0, 3, 1, 2)
            if (layer_height, layer_width) != grid:
                hidden = F.interpolate(hidden, size=grid, mode="bilinear", align_corners=False)
                hidden = hidden.to(dtype)  # autocast may run the resize in float32
            hidden = hidden.permute(0, 2, 3, 1).reshape(-1, hidden.shape[1])
            total = hidden if total is None else total.add_(hidden)
        if total is None:
            total = bias.expand(patches, -1).clone()
        return total

    def _member_mean(self, hidden: torch.Tensor) -> torch.Tensor:
        """Floored, averaged member scores of pre-activations ``[N, K * hidden]`` (in place)."""
        dtype = hidden.dtype
        output_weight = self.output_weight.to(dtype)
        hidden_width = output_weight.shape[1]
        hidden = F.leaky_relu_(hidden, self.negative_slope)
        logits = torch.stack(
            [
                hidden[:, k * hidden_width : (k + 1) * hidden_width] @ output_weight[k]
                for k in range(output_weight.shape[0])
            ],
            dim=1,
        )  # [N, K]
        logits = logits + self.output_bias.to(dtype)
        return logits.neg_().clamp_min_(self.score_floor).mean(1)


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
        in_map_layers=aggregator.in_map_layers,
    )


class GraphScorer(nn.Module):
    """The folded scorer as one static graph, for export (ONNX, OpenVINO) and compilers.

    The same arithmetic as :class:`FoldedScorer`, written with graph operators only: each
    layer's folded map is a 1x1 convolution on its own grid (the coarse ones resized
    afterwards), the members' last layers one grouped 1x1 convolution. No Python loop over
    images or rows, no in-place op and no view of a partly written tensor, so
    ``torch.onnx.export`` and OpenVINO's ONNX reader see a plain feed-forward graph. Equal
    to :class:`FoldedScorer` within float32 rounding (a different summation order).
    Eager PyTorch on the CPU keeps :class:`FoldedScorer`: its chunked GEMMs keep the wide
    hidden activations in cache.

    Args:
        folded: The folded scorer to copy.
    """

    def __init__(self, folded: FoldedScorer) -> None:
        super().__init__()
        self.layer_count = folded.layer_count
        self.in_map_layers = folded.in_map_layers
        for index, weight_t in enumerate(folded.layer_weights_t()):
            # [C_i, K * hidden] -> a [K * hidden, C_i, 1, 1] 1x1 convolution
            self.register_buffer(f"conv{index}", weight_t.T.contiguous()[:, :, None, None])
        members, hidden = folded.output_weight.shape
        self.members = int(members)
        self.register_buffer("hidden_bias", folded.hidden_bias.clone())
        self.register_buffer(
            "output_weight", folded.output_weight.reshape(members, hidden, 1, 1).clone()
        )
        self.register_buffer("output_bias", folded.output_bias.clone())
        self.negative_slope = folded.negative_slope
        self.score_floor = folded.score_floor

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Scores every patch.

        Args:
            feature_maps: Backbone maps, finest first, ``[B, C_i, h_i, w_i]``.

        Returns:
            Anomaly scores ``[B, h_0, w_0]``.
        """
        grid = (int(feature_maps[0].shape[-2]), int(feature_maps[0].shape[-1]))
        pooled = [
            F.avg_pool2d(
                feature_map, 3, stride=1, padding=1,
                count_include_pad=index >= self.in_map_layers,
            )
            for index, feature_map in enumerate(feature_maps)
        ]
        # Coarse layers first (each resized after its 1x1 map), the finest layer's map last
        # with the bias: a runtime fuses that convolution with the sum and the activation.
        coarse = None
        for index in range(1, self.layer_count):
            hidden = F.conv2d(pooled[index], getattr(self, f"conv{index}"))
            if tuple(hidden.shape[-2:]) != grid:
                hidden = F.interpolate(hidden, size=grid, mode="bilinear", align_corners=False)
            coarse = hidden if coarse is None else coarse + hidden
        total = F.conv2d(pooled[0], self.conv0, self.hidden_bias)
        if coarse is not None:
            total = total + coarse
        activated = F.leaky_relu(total, self.negative_slope)
        logits = F.conv2d(activated, self.output_weight, self.output_bias, groups=self.members)
        return torch.clamp(-logits, min=self.score_floor).mean(dim=1)
