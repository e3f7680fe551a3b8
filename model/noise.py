"""Training-only generator of synthetic anomalous features (Gaussian noise)."""

from __future__ import annotations

import torch


class GaussianAnomalyGenerator:
    """Adds i.i.d. Gaussian noise to adapted features.

    Args:
        sigma: Standard deviation of the noise (0.015 in the paper, for WRN50 features).
    """

    def __init__(self, sigma: float = 0.015) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = sigma

    def __call__(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Returns noisy copies of ``features`` (``[N, D]`` in, ``[N, D]`` out)."""
        noise = torch.randn(
            features.shape, generator=generator, device=features.device, dtype=features.dtype
        )
        return features + noise * self.sigma
