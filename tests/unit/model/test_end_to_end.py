"""Fits on a few real images from ../shared/data/mtd at small size (skips when absent)."""

import json
from pathlib import Path

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
            "50",
            "--memory-bank-size",
            "500",
        ]
    )
    assert code == 0 and artifact.is_file()
    meta = load_artifact(artifact).metadata
    assert meta.train_image_count + meta.holdout_image_count == 50
    assert meta.patch_memory is not None and meta.patch_memory.size == 500
    assert meta.second_image_size == 48  # the default second scale, 0.75
    assert meta.terms_include_holdout  # the default rebuilds the bank from all 50 images
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
    assert (
        "score: SimpleNet + memory bank (500 patches) + global Gaussian; input standardised "
        "to one grey level and contrast; scales 64 + 48 px; in-map border mean on the 1 finest "
        "layer" in out
    )
    assert "memory bank and Gaussian rebuilt from all 50 images after calibration" in out
    assert code == 0 and "image AUROC" in out and "AUPRO" in out
    assert "recall at 1% false alarms" in out and "target false alarm rate" in out
    assert len(list((tmp_path / "ov").glob("*.png"))) == 3
    image = sorted((MTD / "test" / "break").iterdir())[0]
    # the same file name in another folder must not collide
    twin = tmp_path / "elsewhere" / image.name
    twin.parent.mkdir()
    twin.write_bytes(image.read_bytes())
    out_dir = tmp_path / "p"
    code = cli.main(
        ["predict", "--model", str(artifact), "--output", str(out_dir), str(image), str(twin)]
    )
    assert code == 0
    table = json.loads((out_dir / "predictions.json").read_text())
    rows = table["images"]
    assert [row["path"] for row in rows] == [str(image.resolve()), str(twin.resolve())]
    assert rows[0]["heatmap"] != rows[1]["heatmap"]
    from model.data import read_image

    original = read_image(image)
    for row in rows:
        assert row["label"] in ("good", "anomalous")
        assert row["normalized_score"] == pytest.approx(rows[0]["normalized_score"], rel=1e-4)
        heatmap, overlay = read_image(row["heatmap"]), read_image(row["overlay"])
        assert heatmap.shape == original.shape and overlay.shape == original.shape
    code = cli.main(
        [
            "predict",
            "--model",
            str(artifact),
            "--output",
            str(out_dir),
            "--format",
            "csv",
            str(image),
        ]
    )
    header = (out_dir / "predictions.csv").read_text().splitlines()[0]
    assert code == 0 and header == "path,score,normalized_score,label,heatmap,overlay"


def test_cli_eval_without_masks_reports_image_metrics_only(tmp_path, capsys):
    artifact = tmp_path / "m.safetensors"
    fit = [
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
        "--heads",
        "1",
        "--max-images",
        "12",
    ]
    assert cli.main(fit) == 0
    for name, source in (("good", "good"), ("cracked", "break")):
        folder = tmp_path / "data" / "test" / name
        folder.mkdir(parents=True)
        for path in sorted((MTD / "test" / source).iterdir())[:4]:
            (folder / path.name).write_bytes(path.read_bytes())
    capsys.readouterr()
    code = cli.main(
        [
            "eval",
            "--model",
            str(artifact),
            "--data",
            str(tmp_path / "data"),
            "--json",
            str(tmp_path / "m.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "image metrics only" in out and "AUPRO" not in out
    assert "false alarm rate on unseen good" in out and "recall at 1% false alarms" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["pixel_auroc"] is None and metrics["good_count"] == 4


def test_cli_reports_bad_artifact(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    assert cli.main(["predict", "--model", str(bad), str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_help_describes_every_option_with_its_default(capsys):
    for command in ("fit", "eval", "predict"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        options = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
        assert options, command
        blocks = text.split("options:")[1]
        for option in options:
            if option in ("--help", "-h"):
                continue
            assert option in blocks
        assert text.count("(default:") >= len([o for o in options if o != "--help"]) - 4
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    fit_help = capsys.readouterr().out
    for backbone in (
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "wide_resnet50_2"
    ):
        assert backbone in fit_help
