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


class HeadEnsemble(nn.Module):
    """Several independently trained heads; the patch score is the mean of their scores.

    The truncated L1 loss stops shaping a head once a normal patch is past the margin, so
    how far past it lands is left to the head's initialisation: heads trained from
    different seeds agree on what is anomalous and disagree on the rest. Each member's score
    is floored at ``score_floor`` (``-margin``: every patch the loss calls confidently
    normal counts the same) and the members are averaged, which cancels that disagreement.

    Args:
        members: Trained heads, all with the same dimensions.
        score_floor: Lower bound applied to each member's patch scores.
    """

    def __init__(self, members: list[SimpleNetHead], score_floor: float) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one head")
        self.members = nn.ModuleList(members)
        self.score_floor = float(score_floor)

    @classmethod
    def empty(
        cls, count: int, embed_dim: int, hidden_dim: int, score_floor: float
    ) -> HeadEnsemble:
        """Builds ``count`` untrained heads (to load a state dict into)."""
        return cls([SimpleNetHead(embed_dim, hidden_dim) for _ in range(count)], score_floor)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Patch anomaly scores.

        Args:
            features: ``[N, embed_dim]`` patch features.

        Returns:
            ``[N]`` mean of the members' floored anomaly scores.
        """
        scores = torch.stack([member(features) for member in self.members])
        return scores.clamp_min(self.score_floor).mean(dim=0)
