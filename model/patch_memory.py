"""A memory bank of normal patch features whose nearest-neighbour distance joins the score map.

SimpleNet's discriminator learns a boundary around the normal patches from synthetic noise;
where a real defect lies off in a direction the noise rarely probed, the boundary is loose
and the heatmap lights up a part of the defect or nothing. A nearest-neighbour distance to
the training patches (PatchCore, Roth et al., CVPR 2022) needs no such boundary: a patch
unlike every normal patch is far from all of them. On defect types the development split
does not have, its heatmaps localise far better (synthetic defects, 2 heads, pixel AUROC /
AUPRO: SimpleNet 0.829 / 0.759, nearest neighbour to a 4000-patch coreset 0.875 / 0.847),
while SimpleNet catches more at 1 % false alarms; their sum, the distance scaled on the
held-out good images, beats both on image metrics (image AUROC 0.971, recall at 1 % false
alarms 0.805 against 0.961 / 0.725 and 0.970 / 0.750) and keeps most of the localisation
gain (0.861 / 0.815); the issue 12 note has the table.

The bank is a greedy coreset of the training patch features (PatchCore's k-center greedy
selection on a random projection), so a few thousand patches cover the rare normal patterns
a random subsample of the same size misses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# Johnson-Lindenstrauss projection width used only to pick the coreset (PatchCore's 128).
CORESET_PROJECTION_DIM = 128
# Candidates the greedy selection looks at (a random subset of all training patches).
CORESET_CANDIDATES = 100_000


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    *,
    seed: int = 0,
    candidates: int = CORESET_CANDIDATES,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Indices of a k-center greedy coreset (each new point the farthest from those chosen).

    Args:
        features: ``[N, D]`` patch features.
        size: Points to choose (all of them when ``N <= size``).
        seed: Seed of the candidate subset, the projection and the first point.
        candidates: Look only at this many random points (``N`` when fewer).
        progress: Called with the number of points chosen so far, every 250 points.

    Returns:
        ``[min(size, N, candidates)]`` int64 indices into ``features``.
    """
    count = features.shape[0]
    if count <= size:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randperm(count, generator=generator)[: min(candidates, count)]
    if len(pool) <= size:
        return pool
    dims = features.shape[1]
    projection = torch.randn(dims, CORESET_PROJECTION_DIM, generator=generator) / np.sqrt(
        CORESET_PROJECTION_DIM
    )
    points = features[pool].float() @ projection
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(len(pool), (1,), generator=generator))
    nearest = torch.sum((points - points[chosen[0]]) ** 2, dim=1)
    for index in range(1, size):
        chosen[index] = torch.argmax(nearest)
        nearest = torch.minimum(nearest, torch.sum((points - points[chosen[index]]) ** 2, dim=1))
        if progress is not None and (index + 1) % 250 == 0:
            progress(index + 1)
    if progress is not None:
        progress(size)
    return pool[chosen]


class PatchMemory(nn.Module):
    """Weighted nearest-neighbour distance map of patch features to a bank of normal ones.

    ``map = weight * (min_b ||f - b|| - center)`` per patch.

    Args:
        bank: ``[M, D]`` normal patch features.
        center: Median over the held-out good images of their largest patch distance.
        weight: Scale that gives the distance map the SimpleNet map's held-out spread, times
            the fit's memory emphasis (``FitConfig.memory_emphasis``).
    """

    def __init__(self, bank: torch.Tensor, *, center: float, weight: float) -> None:
        super().__init__()
        if bank.ndim != 2 or bank.shape[0] < 1:
            raise ValueError(f"bank must be [M, D] with M >= 1, got {tuple(bank.shape)}")
        if not (np.isfinite(center) and np.isfinite(weight) and weight > 0.0):
            raise ValueError(f"center {center} and weight {weight} must be finite, weight > 0")
        bank = bank.detach().float().contiguous()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_norms", torch.sum(bank * bank, dim=1), persistent=False)
        self.center = float(center)
        self.weight = float(weight)

    def scaled(self, *, center: float, weight: float) -> PatchMemory:
        """The same bank with another center and weight."""
        return PatchMemory(self.bank, center=center, weight=weight)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour distance maps ``[B, h, w]`` of patch features ``[B, D, h, w]``."""
        batch, dims, height, width = features.shape
        patches = features.flatten(2).transpose(1, 2).reshape(-1, dims).float()
        squared = (
            torch.sum(patches * patches, dim=1, keepdim=True)
            - 2.0 * torch.matmul(patches, self.bank.T)
            + self.bank_norms
        )
        nearest = torch.amin(squared, dim=1)
        return torch.sqrt(torch.clamp(nearest, min=0.0)).reshape(batch, height, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The weighted, centred distance map ``[B, h, w]``."""
        return self.weight * (self.distances(features) - self.center)
