from collections import deque

import numpy as np
import pytest

from model.data import InMemorySample, list_test_samples
from model.errors import DatasetError
from model.evaluation import (
    FALSE_ALARM_RATES,
    aupro,
    auroc,
    connected_components,
    evaluate,
    false_alarm_threshold,
    recall_at_false_alarm_rate,
)


def _bfs_regions(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    regions = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        regions += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                    if inside and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return regions


@pytest.mark.parametrize("density", [0.0, 0.2, 0.45, 0.6])
def test_connected_components_match_a_flood_fill(density):
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((40, 37)) < density
    labels = connected_components(mask)
    assert labels.max() == _bfs_regions(mask)
    assert ((labels > 0) == mask).all()
    # one label per region: pixels of a label are never split across flood-fill regions
    pairs = {(int(a), int(b)) for a, b in zip(labels.ravel(), mask.ravel(), strict=True)}
    assert len(pairs) == labels.max() + (1 if (~mask).any() else 0)


def test_diagonal_pixels_connect():
    mask = np.eye(6, dtype=bool)
    assert connected_components(mask).max() == 1


def test_recall_at_false_alarm_rate_uses_the_good_scores_only():
    good = np.arange(100, dtype=float)  # 0..99
    defects = np.array([97.5, 98.5, 99.5, 50.0])
    # 1 % of 100 good images may alarm: the threshold is the second highest good (98)
    assert recall_at_false_alarm_rate(good, defects, 0.01) == pytest.approx(0.5)
    # 0.1 %: no good image may alarm: above the maximum (99)
    assert recall_at_false_alarm_rate(good, defects, 0.001) == pytest.approx(0.25)
    # 5 %: above the sixth highest (94)
    assert recall_at_false_alarm_rate(good, defects, 0.05) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        recall_at_false_alarm_rate(good, [], 0.01)


def test_false_alarm_threshold_allows_floor_of_rate_times_good_alarms():
    good = np.random.default_rng(0).permutation(np.arange(100, dtype=float))
    assert false_alarm_threshold(good, 0.01) == 98.0  # one good image (99) above it
    assert false_alarm_threshold(good, 0.001) == 99.0  # none above: the maximum
    assert false_alarm_threshold(good, 0.05) == 94.0
    assert false_alarm_threshold(np.arange(50.0), 0.01) == 49.0  # under 1 / rate: the max
    with pytest.raises(ValueError):
        false_alarm_threshold(np.array([]), 0.01)
    with pytest.raises(ValueError):
        false_alarm_threshold(good, 1.0)


def test_auroc_and_aupro_perfect_and_inverted():
    labels = np.array([0, 0, 1, 1], bool)
    assert auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    noise = np.random.default_rng(0).random(masks.shape) * 0.5
    assert aupro(masks, masks + noise) == pytest.approx(1.0, abs=0.01)
    assert aupro(masks, 1.0 - masks + noise) == pytest.approx(0.0, abs=0.01)


def _samples(images, with_masks: bool):
    samples = [InMemorySample(image, None, "good", f"good/{i}") for i, image in enumerate(images)]
    for i, image in enumerate(images):
        defect = image.copy()
        defect[10:20, 10:20] = 255
        mask = np.zeros(image.shape[:2], bool)
        mask[10:20, 10:20] = True
        samples.append(InMemorySample(defect, mask if with_masks else None, "spot", f"spot/{i}"))
    return samples


def test_evaluate_reports_rates_and_pixel_metrics(random_detector, images):
    report = evaluate(random_detector, _samples(images, with_masks=True))
    assert report.has_masks and 0.0 <= report.pixel_auroc <= 1.0
    assert set(report.recall_at_false_alarms) == set(FALSE_ALARM_RATES)
    assert (
        report.target_false_alarm_rate
        == random_detector.metadata.calibration.target_false_alarm_rate
    )
    assert report.good_count == 3 and report.image_count == 6
    table = report.table()
    assert "recall at 1% false alarms  " in table
    assert "false alarm rate on unseen good  " in table.replace(" " * 10, " ")


def test_evaluate_without_masks_gives_image_metrics_only(random_detector, images):
    report = evaluate(random_detector, _samples(images, with_masks=False))
    assert not report.has_masks and report.pixel_auroc is None and report.aupro is None
    assert "image metrics only" in report.table()
    assert report.to_dict()["recall_at_false_alarms"]["0.01"] == report.recall_at_false_alarms[0.01]


def test_evaluate_needs_both_classes(random_detector, images):
    good_only = [InMemorySample(image, None, "good", str(i)) for i, image in enumerate(images)]
    with pytest.raises(DatasetError):
        evaluate(random_detector, good_only)


def test_list_test_samples_without_ground_truth(tmp_path):
    import torch
    from torchvision.io import write_png

    for name in ("good", "cracked"):
        folder = tmp_path / "test" / name
        folder.mkdir(parents=True)
        write_png(torch.zeros(3, 16, 16, dtype=torch.uint8), str(folder / "a.png"))
    samples = list_test_samples(tmp_path)
    assert [s.defect_class for s in samples] == ["cracked", "good"]
    assert not any(s.has_mask for s in samples)
    (tmp_path / "ground_truth" / "cracked").mkdir(parents=True)
    with pytest.raises(DatasetError, match="missing mask"):
        list_test_samples(tmp_path)
