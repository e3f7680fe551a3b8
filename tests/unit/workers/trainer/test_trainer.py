"""Trainer job without a network: data collection, gate, CLI and settings."""

from __future__ import annotations

import io
import json
import os

import cv2
import numpy as np
import pytest

from tests.twins import BrightSpotDetector
from workers.trainer import main as trainer
from workers.trainer.data import image_digest, labelled
from workers.trainer.gate import GateFigures, judge, score_on_gate
from workers.trainer.report import summary_table
from workers.trainer.run import RunOptions, run_training
from workers.trainer.selection import deduplicate, in_gate, sample, split_for_gate
from workers.trainer.settings import FitSettings, GateSettings, TrainerSettings


def _frames(count: int, seed: int, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 100, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def _write(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        cv2.imwrite(str(folder / f"{index:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


def test_deduplicate_drops_copies_and_near_copies_keeps_distinct_frames():
    distinct = _frames(5, seed=1)
    noisy_copy = distinct[0].copy()
    noisy_copy[:2, :2] = 255  # a few pixels differ: the same scene
    items = [labelled(f, str(i)) for i, f in enumerate([*distinct, distinct[2], noisy_copy])]
    kept, dropped = deduplicate(items, max_diff=0.5)
    assert [k.source for k in kept] == ["0", "1", "2", "3", "4"] and dropped == 2
    kept, dropped = deduplicate(items, max_diff=0)
    assert len(kept) == 6 and dropped == 1, "0 only drops identical pixels"


def test_gate_split_is_stable_and_excludes_what_the_current_model_saw():
    items = [labelled(f, str(i)) for i, f in enumerate(_frames(200, seed=2, size=8))]
    train, gate = split_for_gate(items, 0.2)
    assert 20 < len(gate) < 60 and len(train) + len(gate) == 200
    assert {g.digest for g in gate} == {i.digest for i in items if in_gate(i.digest, 0.2)}
    _again, gate_again = split_for_gate(list(reversed(items)), 0.2)
    assert {g.digest for g in gate_again} == {g.digest for g in gate}, "order-independent"
    seen = {gate[0].digest, gate[1].digest}
    train2, gate2 = split_for_gate(items, 0.2, trained_by_current=seen)
    assert not seen & {g.digest for g in gate2} and seen <= {t.digest for t in train2}


def test_sample_is_seeded_and_bounded():
    items = [labelled(f, str(i)) for i, f in enumerate(_frames(30, seed=3, size=8))]
    assert sample(items, 50, seed=0) == items
    first = sample(items, 10, seed=0)
    assert len(first) == 10 and first == sample(items, 10, seed=0)
    order = [int(x.source) for x in first]
    assert order == sorted(order) and len(set(order)) == 10


def test_judge_applies_every_bound():
    bounds = GateSettings(min_good_frames=10, max_false_alarm_rate=0.05,
                          max_false_alarm_increase=0.02, max_detection_drop=0.05,
                          max_auroc_drop=0.02)
    current = GateFigures("old", 100, 0.02, 50, 0.90, 0.95)
    assert judge(GateFigures("new", 100, 0.03, 50, 0.88, 0.94), current, bounds) == []
    assert judge(GateFigures("new", 100, 0.04, 50, 0.99, 0.99), None, bounds) == []
    reasons = judge(GateFigures("new", 5, 0.06, 50, 0.80, 0.90), current, bounds)
    assert len(reasons) == 5
    assert any("only 5 gate frames" in r for r in reasons)
    assert any("0.060 > 0.050" in r for r in reasons)
    assert any("exceeds the current" in r for r in reasons)
    assert any("detection rate 0.800" in r for r in reasons)
    assert any("AUROC 0.900" in r for r in reasons)
    absolute = GateSettings(min_detection_rate=0.5, min_auroc=0.8)
    reasons = judge(GateFigures("new", 100, 0.01, 50, 0.4, 0.7), None, absolute)
    assert reasons == ["detection rate 0.400 < 0.500", "AUROC 0.700 < 0.800"]
    no_defects = GateFigures("new", 100, 0.01)
    assert judge(no_defects, GateFigures("old", 100, 0.01), bounds) == []


def test_score_on_gate_counts_false_alarms_detections_and_auroc():
    dark = [np.full((8, 8, 3), 40, np.uint8)] * 9 + [np.full((8, 8, 3), 250, np.uint8)]
    spots = [np.full((8, 8, 3), 250, np.uint8)] * 3 + [np.full((8, 8, 3), 60, np.uint8)]
    figures = score_on_gate(BrightSpotDetector("a", "v1"), dark, spots, chunk=3)
    # AUROC by pairs: each 250 spot beats 9 dark frames and ties the bright good one (9.5),
    # the faint spot beats the 9 dark frames only: (3 * 9.5 + 9) / (4 * 10)
    assert figures == GateFigures("v1", 10, 0.1, 4, 0.75, pytest.approx(0.9375))


def _settings(tmp_path, **values) -> TrainerSettings:
    return TrainerSettings(redis={"url": "redis://127.0.0.1:1/0"}, model_store=tmp_path / "store",
                           data_dir=tmp_path / "data", **values)


def test_dry_run_fits_on_training_frames_only_and_gates(tmp_path):
    good = _frames(40, seed=4)
    gate_only = _frames(6, seed=5)
    # one duplicate, and a gate-only frame that must not be trained on
    _write(tmp_path / "data" / "a" / "good", [*good, good[0], gate_only[0]])
    _write(tmp_path / "data" / "a" / "gate-good", gate_only)
    # the current model's report: frames it was trained on never go to the gate
    trained_before = [d for d in map(image_digest, good) if in_gate(d, 0.2)][:2]
    versions = tmp_path / "store" / "a" / "versions"
    versions.mkdir(parents=True)
    (versions / "v-old.json").write_text(json.dumps({"train_digests": trained_before}))
    (tmp_path / "store" / "a" / "current").write_text("v-old\n")
    spots = [f.copy() for f in _frames(4, seed=6)]
    for spot in spots:
        spot[10:14, 10:14] = 255
    _write(tmp_path / "data" / "a" / "defects" / "spot", spots)
    seen: dict = {}

    def fitter(images, *, config, product_line, progress):
        seen.update(images=images, config=config, line=product_line)
        from model.trainer import FitProgress

        for epoch in range(config.epochs):
            progress(FitProgress("train", epoch + 1, config.epochs, 0.1))
        return BrightSpotDetector(product_line, "v-new")

    settings = _settings(tmp_path, max_images=30, gate=GateSettings(min_good_frames=5))
    outcome = run_training(settings, RunOptions(line="a", dry_run=True, progress=False), fitter)
    counts = outcome.counts
    assert counts["good_read"] == 42 and counts["duplicates"] == 1
    assert counts["gate_extra"] == 6 and counts["defects"] == 4
    assert counts["train"] == len(seen["images"]) == 30
    trained = {image_digest(i) for i in seen["images"]}
    gate_digests = {image_digest(g) for g in good if in_gate(image_digest(g), 0.2)}
    gate_digests -= set(trained_before)
    assert gate_digests and not gate_digests & trained
    assert image_digest(gate_only[0]) not in trained
    assert counts["gate_from_split"] == len(gate_digests)
    assert outcome.previous == "v-old" and any("unusable" in n for n in outcome.notes)
    # Redis (reviewed false alarms) is away: the run goes on without them and says so
    assert counts["false_alarms"] == 0
    assert any(n.startswith("trained without the reviewed false alarms") for n in outcome.notes)
    assert json.loads(seen["config"].extra["trainer_counts"])["train"] == 30
    assert outcome.candidate == "v-new" and not outcome.promoted
    assert outcome.candidate_figures.detection_rate == 1.0
    assert outcome.candidate_figures.false_alarm_rate == 0.0
    assert outcome.reasons == []
    assert sorted(p.name for p in versions.iterdir()) == ["v-old.json"], "dry run: no write"
    table = summary_table(outcome, settings.gate, dry_run=True)
    assert "dry run" in table and "1.000" in table


def test_missing_data_and_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("LINEWATCH_"):
            monkeypatch.delenv(name)
    assert trainer.main(["--line", "a"]) == trainer.EXIT_USAGE
    assert "model_store" in capsys.readouterr().err
    monkeypatch.setenv("LINEWATCH_REDIS__URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("LINEWATCH_MODEL_STORE", str(tmp_path / "store"))
    assert trainer.main(["--line", "a", "--no-progress"]) == trainer.EXIT_FAILED
    assert "no good frames" in capsys.readouterr().err
    assert trainer.main(["--line", "a", "--epochs", "0"]) == trainer.EXIT_USAGE
    assert trainer.main(["rollback", "--line", "a"]) == trainer.EXIT_FAILED
    out = io.StringIO()
    assert trainer.main(["list", "--line", "a"], out=out) == 0
    assert out.getvalue().startswith("  version")
    with pytest.raises(SystemExit):
        trainer.main(["rollback"])  # --line is required


def _environment(monkeypatch, folder, **fit: str) -> None:
    """The trainer's required settings (and ``fit`` ones) in the environment, run in
    ``folder`` (no stray ``.env``)."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LINEWATCH_REDIS__URL", "redis://:pw@r:6379/0")
    monkeypatch.setenv("LINEWATCH_MODEL_STORE", "/models")
    for name, value in fit.items():
        monkeypatch.setenv(f"LINEWATCH_FIT__{name.upper()}", value)


def test_settings_from_environment(tmp_path, monkeypatch):
    _environment(monkeypatch, tmp_path, image_size="128")
    monkeypatch.setenv("LINEWATCH_GATE__MAX_FALSE_ALARM_RATE", "0.1")
    monkeypatch.setenv("LINEWATCH_KEEP_VERSIONS", "3")
    settings = TrainerSettings()
    assert settings.fit.image_size == 128 and settings.gate.max_false_alarm_rate == 0.1
    assert settings.keep_versions == 3 and settings.kafka is None
    assert "pw" not in repr(settings)


def test_a_second_scale_under_32_px_fails_at_start_up_naming_the_field(tmp_path, monkeypatch):
    from pydantic import ValidationError

    _environment(monkeypatch, tmp_path, image_size="40", second_scale="0.5")
    with pytest.raises(ValidationError, match="second_scale"):
        TrainerSettings()
    for bad in ("1", "0.99"):  # 0.99 x 40 rounds to 40: no smaller scale
        monkeypatch.setenv("LINEWATCH_FIT__SECOND_SCALE", bad)
        with pytest.raises(ValidationError, match="second_scale"):
            TrainerSettings()
    monkeypatch.setenv("LINEWATCH_FIT__SECOND_SCALE", "0")  # off
    assert TrainerSettings().fit.second_scale == 0.0


def test_fit_defaults_are_the_model_packages():
    """FitSettings writes the model's defaults out (reading settings must not load torch)."""
    from model.trainer import FitConfig

    model_defaults = FitConfig()
    for name, field in FitSettings.model_fields.items():
        if name in ("backbone_weights", "device"):
            continue  # a path vs a string, and "auto" resolved by the trainer
        assert field.default == getattr(model_defaults, name), name


def test_reading_the_trainer_settings_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import workers.trainer.settings; import workers.trainer.main; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
