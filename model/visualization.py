"""Pictures of heatmaps: colour map, overlays and the 8-bit heatmap encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.io import write_png


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """Maps a normalised heatmap to uint8: 0 -> 0, 0.5 (threshold) -> 127, >= 1 -> 255."""
    return np.floor(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """Maps a normalised heatmap (0.5 = threshold) to a jet-like RGB uint8 image."""
    x = np.clip(heatmap, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def blend(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends an ``HxWx3`` colour map over an image of the same size (grey images allowed)."""
    base = np.asarray(image, dtype=np.float32)
    if base.ndim == 2:
        base = np.repeat(base[:, :, None], 3, axis=2)
    mixed = (1.0 - alpha) * base + alpha * colors.astype(np.float32)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def write_overlay(
    path: Path, image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray | None
) -> None:
    """Writes image | heatmap blended over image | mask side by side as PNG (model size)."""
    size = heatmap.shape[0]
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)[0]
    base = resized.permute(1, 2, 0).clamp(0, 255).numpy()
    blended = blend(base, colorize(heatmap)).astype(np.float32)
    mask_rgb = np.zeros_like(base) if mask is None else np.repeat(mask[:, :, None] * 255.0, 3, 2)
    panel = np.concatenate([base, blended, mask_rgb], axis=1).astype(np.uint8)
    write_png(torch.from_numpy(panel).permute(2, 0, 1).contiguous(), str(path))
