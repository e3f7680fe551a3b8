"""Fits on a few real images from ../shared/data/mtd at small size (skips when absent)."""

from pathlib import Path

import numpy as np
import pytest

from model import cli
from model.artifact import load_artifact
from model.data import list_images, read_images
from model.trainer import FitConfig, fit_detector

MTD = Path(__file__).resolve().parents[4] / "shared" / "data" / "mtd"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MTD.is_dir(), reason=f"real data not found at {MTD}"),
]


def test_defective_images_score_higher_than_good(lite0):
    train = read_images(list_images(MTD / "train" / "good")[:40])
    config = FitConfig(image_size=128, epochs=4, seed=0)
    detector = fit_detector(train, config=config, product_line="mtd", backbone=lite0)
    good = read_images(list_images(MTD / "test" / "good")[:20])
    defective = read_images(
        list_images(MTD / "test" / "blowhole")[:10] + list_images(MTD / "test" / "break")[:10]
    )
    good_scores = detector.predict(good).normalized_scores
    defect_scores = detector.predict(defective).normalized_scores
    assert defect_scores.mean() > good_scores.mean()
    assert detector.metadata.holdout_image_count == 8  # 20% of 40
    assert len(detector.metadata.calibration_scores) == 8


def test_cli_fit_eval_predict(tmp_path, capsys):
    artifact = tmp_path / "mtd.safetensors"
    code = cli.main(
        [
            "fit",
            "--data",
            str(MTD / "train" / "good"),
            "--line",
            "mtd",
            "--output",
            str(artifact),
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--max-images",
            "16",
        ]
    )
    assert code == 0 and artifact.is_file()
    meta = load_artifact(artifact).metadata
    assert meta.train_image_count + meta.holdout_image_count == 16
    code = cli.main(
        [
            "eval",
            "--model",
            str(artifact),
            "--data",
            str(MTD),
            "--overlays",
            str(tmp_path / "ov"),
            "--overlay-count",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "image AUROC" in out and "AUPRO" in out
    assert len(list((tmp_path / "ov").glob("*.png"))) == 3
    image = sorted((MTD / "test" / "break").iterdir())[0]
    code = cli.main(
        ["predict", "--model", str(artifact), "--output", str(tmp_path / "p"), str(image)]
    )
    assert code == 0
    heatmap = tmp_path / "p" / f"{image.stem}_heatmap.png"
    assert heatmap.is_file()
    from model.data import read_image

    assert (
        read_image(heatmap).shape == (64, 64, 3)
        and np.asarray(read_image(heatmap)).dtype == np.uint8
    )


def test_cli_reports_bad_artifact(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    assert cli.main(["predict", "--model", str(bad), str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
