"""SimpleNet's truncated L1 loss."""

from __future__ import annotations

import torch


def truncated_l1_loss(
    normal_logits: torch.Tensor, anomalous_logits: torch.Tensor, margin: float = 0.5
) -> torch.Tensor:
    """Pushes normal logits to ``>= margin`` and synthetic anomalous ones to ``<= -margin``.

    Args:
        normal_logits: ``[N]`` discriminator outputs for adapted normal features.
        anomalous_logits: ``[M]`` outputs for the noisy (synthetic anomalous) features.
        margin: Truncation point (0.5 in the paper).

    Returns:
        Scalar loss: ``mean(max(0, margin - normal)) + mean(max(0, margin + anomalous))``.
    """
    normal_term = torch.clamp(margin - normal_logits, min=0).mean()
    anomalous_term = torch.clamp(margin + anomalous_logits, min=0).mean()
    return normal_term + anomalous_term
