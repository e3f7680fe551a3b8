"""Training-only image-level synthetic anomalies (GLASS's "local anomaly synthesis").

GLASS (Chen et al., ECCV 2024) trains the discriminator on two kinds of synthetic
anomalies: Gaussian noise on features (SimpleNet's, :mod:`model.noise`) and "local"
anomalies made in image space, as DRAEM (Zavrtanik et al., ICCV 2021) does: a texture is
blended into the image inside a thresholded Perlin-noise mask, and the patches the mask
covers are anomalous. They teach the discriminator what a real change of surface looks like
to the backbone (a region of foreign texture, shading or contrast), which isotropic feature
noise does not.

GLASS and DRAEM take the texture from the DTD dataset. Nothing is downloaded here: the
texture is another good image of the same line, rotated and changed (inverted, posterised,
contrast or brightness shifted), so the synthesis needs no data beyond the fit's own.

Nothing here knows any real or evaluation defect type: shapes are Perlin blobs, never
lines or the evaluation's synthetic defects (:mod:`model.defect_synthesis`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

PERLIN_THRESHOLD = 0.5


def perlin_noise(
    rng: np.random.Generator, shape: tuple[int, int], periods: tuple[int, int]
) -> np.ndarray:
    """2-D gradient (Perlin) noise with ``periods`` lattice cells along each axis.

    Args:
        rng: Random source for the lattice gradients.
        shape: Output ``(H, W)``.
        periods: Lattice cells along ``(H, W)``, each at least 1.

    Returns:
        ``[H, W]`` float noise, roughly in ``[-1, 1]``.
    """
    height, width = shape
    cells_y, cells_x = periods
    ys = (np.arange(height) + 0.5) * cells_y / height
    xs = (np.arange(width) + 0.5) * cells_x / width
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    cell_y, cell_x = np.floor(grid_y).astype(int), np.floor(grid_x).astype(int)
    frac_y, frac_x = grid_y - cell_y, grid_x - cell_x
    angles = rng.uniform(0.0, 2.0 * np.pi, (cells_y + 1, cells_x + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    def corner(dy: int, dx: int) -> np.ndarray:
        gradient = gradients[cell_y + dy, cell_x + dx]
        return gradient[..., 0] * (frac_y - dy) + gradient[..., 1] * (frac_x - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)

    fy, fx = fade(frac_y), fade(frac_x)
    top = corner(0, 0) * (1.0 - fx) + corner(0, 1) * fx
    bottom = corner(1, 0) * (1.0 - fx) + corner(1, 1) * fx
    return np.sqrt(2.0) * (top * (1.0 - fy) + bottom * fy)


def perlin_mask(
    rng: np.random.Generator, shape: tuple[int, int], min_share: float = 0.005
) -> np.ndarray:
    """A thresholded Perlin mask at a random scale (1 to 32 cells per axis).

    Returns:
        ``[H, W]`` bool mask covering at least ``min_share`` of the image when a drawn
        scale allows (several draws are tried).
    """
    mask = np.zeros(shape, dtype=bool)
    for _ in range(16):
        periods = (int(2 ** rng.integers(0, 6)), int(2 ** rng.integers(0, 6)))
        mask = perlin_noise(rng, shape, periods) > PERLIN_THRESHOLD
        if mask.mean() >= min_share:
            break
    return mask


def _foreign_texture(rng: np.random.Generator, source: np.ndarray) -> np.ndarray:
    """A changed copy of a good image: rotated, then inverted / posterised / re-contrasted."""
    texture = np.rot90(source.astype(np.float64), int(rng.integers(0, 4)), axes=(0, 1))
    change = int(rng.integers(0, 5))
    if change == 0:
        texture = 255.0 - texture
    elif change == 1:
        texture = np.floor(texture / 64.0) * 64.0 + 32.0
    elif change == 2:
        texture = (texture - texture.mean()) * rng.uniform(0.3, 2.5) + texture.mean()
    elif change == 3:
        texture = texture + rng.uniform(-80.0, 80.0)
    else:
        texture = texture * rng.uniform(0.4, 1.6)
    return np.clip(texture, 0.0, 255.0)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).numpy().astype(np.float64)


def local_anomaly(
    rng: np.random.Generator, image: np.ndarray, texture_source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Blends a foreign texture into ``image`` inside a Perlin mask.

    Args:
        rng: Random source (mask, texture change, blend strength).
        image: ``HxWx3`` uint8 good image.
        texture_source: Another ``HxWx3`` uint8 good image (any size) for the texture.

    Returns:
        The anomalous ``HxWx3`` uint8 image and its ``[H, W]`` bool mask.
    """
    height, width = image.shape[:2]
    texture = _resize(_foreign_texture(rng, texture_source), height, width)
    mask = perlin_mask(rng, (height, width))
    strength = rng.uniform(0.2, 1.0)
    blended = np.where(
        mask[:, :, None], (1.0 - strength) * image + strength * texture, image.astype(np.float64)
    )
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8), mask


def local_anomaly_set(
    images: Sequence[np.ndarray], seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One local anomaly per image, its texture taken from another image of the set.

    Returns:
        The anomalous images and their masks, in the order of ``images``.
    """
    rng = np.random.default_rng(seed)
    anomalous, masks = [], []
    for index, image in enumerate(images):
        other = int(rng.integers(0, len(images) - 1)) if len(images) > 1 else 0
        other += int(other >= index and len(images) > 1)
        rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        source = (
            images[other]
            if images[other].ndim == 3
            else np.repeat(images[other][:, :, None], 3, axis=2)
        )
        picture, mask = local_anomaly(rng, rgb, source)
        anomalous.append(picture)
        masks.append(mask)
    return anomalous, masks
