import ast
from pathlib import Path

import numpy as np
import pytest

from model.defect_synthesis import (
    DEFECT_KINDS,
    distance_to_polyline,
    random_curve,
    synthesize_defect,
    synthetic_defect_set,
)

MODEL = Path(__file__).resolve().parents[3] / "model"


def _good(seed: int = 0, shape=(120, 100)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(120, 10, shape).clip(0, 255).astype(np.uint8)
    return np.repeat(base[:, :, None], 3, axis=2)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_exactly_inside_a_nonempty_mask(kind):
    image = _good()
    defect = synthesize_defect(image, kind, np.random.default_rng(1))
    assert defect.kind == kind
    assert defect.image.shape == image.shape and defect.image.dtype == np.uint8
    assert defect.mask.shape == image.shape[:2] and defect.mask.dtype == bool
    assert 0 < defect.mask.mean() < 0.6
    changed = np.abs(defect.image.astype(int) - image.astype(int)).max(axis=2) > 0
    assert changed[defect.mask].all()
    if kind != "blotch":  # a blotch's faint rim is outside its mask by design
        assert (changed & ~defect.mask).sum() == 0


def test_lines_are_thin_and_blotches_large():
    rng = np.random.default_rng(3)
    image = _good(shape=(300, 300))
    crack = synthesize_defect(image, "crack", rng)
    blotch = synthesize_defect(image, "blotch", rng)
    assert crack.mask.mean() < 0.05
    assert blotch.mask.mean() > 0.02


def test_set_is_deterministic_and_counts_per_kind():
    images = [_good(seed) for seed in range(3)]
    first = synthetic_defect_set(images, per_kind=2, seed=5)
    again = synthetic_defect_set(images, per_kind=2, seed=5)
    other = synthetic_defect_set(images, per_kind=2, seed=6)
    assert [d.kind for d in first] == [k for k in DEFECT_KINDS for _ in range(2)]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a.mask, b.mask) for a, b in zip(first, other, strict=True))


def test_inputs_are_not_modified_and_bad_input_is_refused():
    image = _good()
    copy = image.copy()
    synthesize_defect(image, "fray", np.random.default_rng(0))
    assert np.array_equal(image, copy)
    with pytest.raises(ValueError, match="unknown defect kind"):
        synthesize_defect(image, "dent", np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthesize_defect(image.astype(np.float32), "crack", np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthetic_defect_set([], per_kind=1)


def test_curve_stays_inside_and_distance_is_exact():
    rng = np.random.default_rng(0)
    points = random_curve(rng, 50, 80, 200.0, wiggle=0.2)
    assert points.shape[1] == 2 and len(points) >= 2
    assert (points[:, 0] >= 0).all() and (points[:, 0] <= 49).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] <= 79).all()
    line = np.array([[10.0, 5.0], [10.0, 25.0]])
    distance = distance_to_polyline(line, 20, 30, reach=3)
    assert distance[10, 15] == 0.0 and distance[12, 15] == pytest.approx(2.0)
    assert np.isinf(distance[0, 0])


def test_fit_code_never_imports_the_synthesis():
    """Synthetic defects (with their masks) are for evaluation only: no label leakage."""
    for path in MODEL.glob("*.py"):
        if path.name == "defect_synthesis.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert "model.defect_synthesis" not in imported, path.name
