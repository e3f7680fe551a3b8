"""SimpleNet's trainable parts: the feature adaptor and the discriminator."""

from __future__ import annotations

import torch
from torch import nn


class FeatureAdaptor(nn.Module):
    """One linear layer mapping pretrained patch features to the target domain."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Adapts features.

        Args:
            features: ``[N, embed_dim]``.

        Returns:
            ``[N, embed_dim]``.
        """
        return self.linear(features)


class Discriminator(nn.Module):
    """Two-layer MLP: Linear -> BatchNorm1d -> LeakyReLU(0.2) -> Linear to one logit.

    High output means normal; the anomaly score is the negated output.
    """

    def __init__(self, embed_dim: int, hidden_dim: int = 1024, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.hidden = nn.Linear(embed_dim, hidden_dim)
        self.norm = nn.BatchNorm1d(hidden_dim)
        self.activation = nn.LeakyReLU(negative_slope)
        self.output = nn.Linear(hidden_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scores features.

        Args:
            features: ``[N, embed_dim]`` adapted features.

        Returns:
            ``[N]`` normality logits.
        """
        return self.output(self.activation(self.norm(self.hidden(features)))).squeeze(-1)


class SimpleNetHead(nn.Module):
    """Adaptor followed by discriminator; returns patch anomaly scores."""

    def __init__(self, embed_dim: int, hidden_dim: int = 1024) -> None:
        super().__init__()
        self.adaptor = FeatureAdaptor(embed_dim)
        self.discriminator = Discriminator(embed_dim, hidden_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Patch anomaly scores.

        Args:
            features: ``[N, embed_dim]`` patch features.

        Returns:
            ``[N]`` anomaly scores (negated discriminator output).
        """
        return -self.discriminator(self.adaptor(features))
