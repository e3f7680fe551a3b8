"""Synthetic defects with exact masks, for evaluation only.

A check that does not reuse the defect types a model was tuned on: thin dark cracks,
bright scratches, faint large blotches (uneven surface) and frayed edges are drawn into
good images that the fit never saw, with a pixel-exact mask of what was changed. The fit
never imports this module (a test holds that): these images and masks only ever reach
:func:`model.evaluation.evaluate`.

Everything is numpy and deterministic for a given seed. Shapes are drawn at the image's own
resolution, so a 1.5 px crack in a 300 px tile is 1.5 px wide whatever size the model runs
at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

DEFECT_KINDS = ("crack", "scratch", "blotch", "fray")


@dataclass(frozen=True)
class SyntheticDefect:
    """A good image with one drawn defect.

    Attributes:
        image: ``HxWx3`` uint8 RGB with the defect.
        mask: ``HxW`` bool, True where the defect changed the image visibly.
        kind: One of :data:`DEFECT_KINDS`.
    """

    image: np.ndarray
    mask: np.ndarray
    kind: str


def _as_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 16:
        raise ValueError(f"expected an HxWx3 image of at least 16 px, got {array.shape}")
    return array


def random_curve(
    rng: np.random.Generator, height: int, width: int, length: float, wiggle: float
) -> np.ndarray:
    """A random walk of 2 px steps with a drifting heading, cut where it leaves the image.

    Args:
        rng: Random source.
        height: Image height.
        width: Image width.
        length: Curve length in pixels (shorter when the walk leaves the image).
        wiggle: Standard deviation of the heading change per step (radians).

    Returns:
        ``[K, 2]`` float points ``(y, x)``, ``K >= 2``, all inside the image.
    """
    step = 2.0
    count = max(int(length / step), 2)
    best = np.zeros((0, 2))
    for _ in range(8):  # keep the longest of a few tries (a walk may leave the image early)
        start = np.array([rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width])
        headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, wiggle, count))
        steps = np.stack([np.sin(headings), np.cos(headings)], axis=1) * step
        points = start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])
        inside = (
            (points[:, 0] >= 0)
            & (points[:, 0] <= height - 1)
            & (points[:, 1] >= 0)
            & (points[:, 1] <= width - 1)
        )
        end = int(np.argmin(inside)) if not inside.all() else len(points)
        if end > len(best):
            best = points[:end]
        if end == len(points):
            break
    if len(best) < 2:
        best = np.array([[height / 2, width / 2], [height / 2, width / 2 + step]])
    return best


def distance_to_polyline(points: np.ndarray, height: int, width: int, reach: float) -> np.ndarray:
    """Distance of every pixel centre to a polyline (``inf`` farther than ``reach``).

    Args:
        points: ``[K, 2]`` polyline ``(y, x)``.
        height: Image height.
        width: Image width.
        reach: Pixels farther than this from the curve's bounding box are not computed.

    Returns:
        ``[H, W]`` float distances.
    """
    distance = np.full((height, width), np.inf)
    top, left = np.floor(points.min(axis=0) - reach).astype(int)
    bottom, right = np.ceil(points.max(axis=0) + reach).astype(int)
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, height - 1), min(right, width - 1)
    ys, xs = np.mgrid[top : bottom + 1, left : right + 1].astype(np.float64)
    pixels = np.stack([ys.ravel(), xs.ravel()], axis=1)  # [P, 2]
    best = np.full(pixels.shape[0], np.inf)
    for a, b in pairwise(points):
        segment = b - a
        squared = float(segment @ segment)
        if squared == 0.0:
            t = np.zeros(pixels.shape[0])
        else:
            t = np.clip((pixels - a) @ segment / squared, 0.0, 1.0)
        nearest = a + t[:, None] * segment
        best = np.minimum(best, np.linalg.norm(pixels - nearest, axis=1))
    distance[top : bottom + 1, left : right + 1] = best.reshape(ys.shape)
    return distance


def _line_coverage(distance: np.ndarray, line_width: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a line of ``line_width`` px from a distance field."""
    return np.clip(line_width / 2.0 + 0.5 - distance, 0.0, 1.0)


def _smooth_field(rng: np.random.Generator, height: int, width: int, blobs: int) -> np.ndarray:
    """A sum of random anisotropic Gaussian blobs, scaled to a peak of 1."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    field = np.zeros((height, width))
    center = np.array([rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width])
    for _ in range(blobs):
        offset = rng.normal(0.0, 0.12, 2) * (height, width)
        cy, cx = center + offset
        sy = rng.uniform(0.08, 0.2) * height
        sx = rng.uniform(0.08, 0.2) * width
        field += np.exp(-0.5 * (((ys - cy) / sy) ** 2 + ((xs - cx) / sx) ** 2))
    return field / field.max()


def _crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    side = min(height, width)
    line_width = rng.uniform(1.0, 2.5)
    depth = rng.uniform(0.3, 0.6)
    points = random_curve(rng, height, width, rng.uniform(0.4, 1.0) * side, wiggle=0.12)
    distance = distance_to_polyline(points, height, width, reach=line_width + 2)
    if rng.random() < 0.5:  # a branch from somewhere along the crack
        branch_start = points[rng.integers(len(points) // 4, max(len(points) // 2, 2))]
        branch = random_curve(rng, height, width, rng.uniform(0.15, 0.35) * side, wiggle=0.15)
        branch = np.clip(branch - branch[0] + branch_start, 0, [height - 1, width - 1])
        distance = np.minimum(
            distance, distance_to_polyline(branch, height, width, reach=line_width + 2)
        )
    coverage = _line_coverage(distance, line_width)
    factor = 1.0 - depth * coverage
    return image * factor[:, :, None], coverage > 0.0


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    side = float(np.hypot(height, width))
    line_width = rng.uniform(1.0, 1.8)
    brightness = rng.uniform(30.0, 70.0)
    points = random_curve(rng, height, width, rng.uniform(0.2, 0.5) * side, wiggle=0.03)
    distance = distance_to_polyline(points, height, width, reach=line_width + 2)
    coverage = _line_coverage(distance, line_width)
    return image + brightness * coverage[:, :, None], coverage > 0.0


def _blotch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    field = _smooth_field(rng, height, width, blobs=int(rng.integers(2, 5)))
    # a soft but visible edge: the shading ramps up between 40 % and 60 % of the field
    ramp = np.clip((field - 0.4) / 0.2, 0.0, 1.0)
    region = ramp * ramp * (3.0 - 2.0 * ramp)
    amplitude = rng.uniform(0.18, 0.35) * (1.0 if rng.random() < 0.5 else -1.0)
    factor = 1.0 + amplitude * region
    return image * factor[:, :, None], region >= 0.5


def _fray(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    span = int(rng.uniform(0.15, 0.4) * height)
    top = int(rng.integers(0, max(height - span, 1)))
    max_depth = rng.uniform(0.04, 0.1) * width
    rows = np.arange(span)
    envelope = np.sin(np.pi * (rows + 0.5) / span)  # deepest mid-span
    walk = np.cumsum(rng.normal(0.0, 1.0, span))
    jagged = np.clip(1.0 + 0.5 * (walk - walk.mean()) / (walk.std() + 1e-9), 0.3, 1.7)
    depth = max_depth * envelope * jagged * rng.uniform(0.85, 1.15, span)
    columns = np.arange(width)[None, :]
    notch = columns < depth[:, None]  # measured from the left edge
    if rng.random() < 0.5:
        notch = notch[:, ::-1]
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + span] = notch
    darkness = rng.uniform(0.2, 0.45)
    texture = rng.normal(1.0, 0.1, (height, width))
    result = np.where(mask[:, :, None], image * darkness * texture[:, :, None], image)
    return result, mask


_DRAW: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "crack": _crack,
    "scratch": _scratch,
    "blotch": _blotch,
    "fray": _fray,
}


def synthesize_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> SyntheticDefect:
    """Draws one defect of ``kind`` into a copy of ``image``.

    Args:
        image: ``HxWx3`` RGB or ``HxW`` grayscale uint8 good image.
        kind: One of :data:`DEFECT_KINDS`.
        rng: Random source (shape, place, strength).

    Returns:
        The defective image and its mask, never empty: every pixel a line or a notch
        changed; for a blotch, the changed pixels where the shading is at least half its
        peak (its faint rim is left out, as an annotator would).

    Raises:
        ValueError: For an unknown kind or an image that is not ``HxWx3`` uint8.
    """
    if kind not in _DRAW:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {DEFECT_KINDS}")
    rgb = _as_rgb(image)
    drawn, mask = _DRAW[kind](rgb.astype(np.float64), rng)
    result = np.clip(np.rint(drawn), 0, 255).astype(np.uint8)
    mask = mask & (np.abs(result.astype(np.int16) - rgb).max(axis=2) > 0)
    if not mask.any():  # a defect on a black region: fall back to a visible bright mark
        return synthesize_defect(image, "scratch", rng)
    return SyntheticDefect(image=result, mask=mask, kind=kind)


def synthetic_defect_set(
    good_images: Sequence[np.ndarray],
    *,
    per_kind: int,
    seed: int = 0,
    kinds: Sequence[str] = DEFECT_KINDS,
) -> list[SyntheticDefect]:
    """Draws ``per_kind`` defects of every kind, cycling through the good images.

    Args:
        good_images: Good images the model was not fitted on.
        per_kind: Defective images per kind.
        seed: Random seed; the same seed gives the same set.
        kinds: Defect kinds to draw.

    Returns:
        ``len(kinds) * per_kind`` defects, kind by kind.
    """
    if not good_images:
        raise ValueError("no good images to draw defects into")
    rng = np.random.default_rng(seed)
    defects = []
    for kind_index, kind in enumerate(kinds):
        for index in range(per_kind):
            base = good_images[(kind_index * per_kind + index) % len(good_images)]
            defects.append(synthesize_defect(base, kind, rng))
    return defects
