"""Synthetic product frames rendered with OpenCV (demo, tests, bench: no download).

Each frame shows one product (a machined disc with a bore and four holes) on a
conveyor belt, with small jitter in position, rotation and lighting. Defective products
carry a scratch or a spot. A sample video is a sequence of such frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("scratch", "spot")


@dataclass(frozen=True, slots=True)
class SyntheticFrame:
    """One rendered frame and what it shows.

    Attributes:
        image: HxWx3 uint8 RGB.
        defect: ``None`` for a good product, else the defect kind.
    """

    image: np.ndarray
    defect: str | None


def _belt(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.full((size, size), 70.0, np.float32)
    stripes = 6.0 * np.sin(np.arange(size, dtype=np.float32) / size * 24 * np.pi)
    base += stripes[None, :]
    base += rng.normal(0.0, 3.0, (size, size)).astype(np.float32)
    return base


def render_product(rng: np.random.Generator, size: int = 256,
                   defect: str | None = None) -> np.ndarray:
    """Render one product frame.

    Args:
        rng: Random generator (jitter, defect placement).
        size: Square side in pixels.
        defect: ``None``, ``"scratch"`` or ``"spot"``.

    Returns:
        ``size x size x 3`` uint8 RGB.
    """
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"defect {defect!r} is not one of {DEFECTS}")
    s = size / 256.0
    gray = _belt(rng, size)
    centre = (size / 2 + rng.uniform(-3, 3) * s, size / 2 + rng.uniform(-3, 3) * s)
    angle = np.pi / 4 + rng.uniform(-0.1, 0.1)
    light = rng.uniform(0.95, 1.05)
    cx, cy = centre
    cv2.circle(gray, (int(cx), int(cy)), int(90 * s), 180.0, -1, cv2.LINE_AA)
    cv2.circle(gray, (int(cx), int(cy)), int(90 * s), 140.0, max(1, int(4 * s)), cv2.LINE_AA)
    cv2.circle(gray, (int(cx), int(cy)), int(28 * s), 60.0, -1, cv2.LINE_AA)
    for k in range(4):
        a = angle + k * np.pi / 2
        hx, hy = cx + 58 * s * np.cos(a), cy + 58 * s * np.sin(a)
        cv2.circle(gray, (int(hx), int(hy)), int(10 * s), 75.0, -1, cv2.LINE_AA)
    if defect is not None:
        r = rng.uniform(38, 75) * s
        a = rng.uniform(0, 2 * np.pi)
        px, py = cx + r * np.cos(a), cy + r * np.sin(a)
        if defect == "scratch":
            d = rng.uniform(0, np.pi)
            length = rng.uniform(30, 45) * s
            p1 = (int(px - length * np.cos(d)), int(py - length * np.sin(d)))
            p2 = (int(px + length * np.cos(d)), int(py + length * np.sin(d)))
            cv2.line(gray, p1, p2, 250.0, max(2, int(7 * s)), cv2.LINE_AA)
        else:
            cv2.circle(gray, (int(px), int(py)), max(4, int(15 * s)), 15.0, -1, cv2.LINE_AA)
    gray = gray * light + rng.normal(0.0, 2.0, gray.shape).astype(np.float32)
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    tint = np.stack([gray, gray, np.clip(gray.astype(np.int16) + 8, 0, 255).astype(np.uint8)],
                    axis=-1)
    return tint


def good_frames(count: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """``count`` good product frames (training data)."""
    rng = np.random.default_rng(seed)
    return [render_product(rng, size) for _ in range(count)]


def frame_sequence(count: int, size: int = 256, defect_every: int = 5,
                   seed: int = 1) -> list[SyntheticFrame]:
    """A production run: every ``defect_every``-th product is defective (alternating kinds).

    Args:
        count: Number of frames.
        size: Square side.
        defect_every: Period of defective products (0: none).
        seed: Random seed.

    Returns:
        The frames, in order.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        defect = None
        if defect_every and index % defect_every == defect_every - 1:
            defect = DEFECTS[(index // defect_every) % len(DEFECTS)]
        frames.append(SyntheticFrame(render_product(rng, size, defect), defect))
    return frames


def write_video(frames: list[SyntheticFrame], path: Path, fps: float = 10.0) -> Path:
    """Write frames to an MJPG AVI plus ``<path>.labels.json`` (defect per frame index).

    Returns:
        The video path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write video {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    labels = {str(i): f.defect for i, f in enumerate(frames)}
    path.with_suffix(path.suffix + ".labels.json").write_text(json.dumps(labels))
    return path
