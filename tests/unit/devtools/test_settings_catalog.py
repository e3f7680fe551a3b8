"""The settings catalogue: env names really read by the classes; generated docs up to date."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.settings_catalog import ROOT_DOC_NOTE, env_names, env_vars, render_markdown
from tests.unit.deploy.deploy_files import ROOT
from workers.dashboard.settings import DashboardSettings
from workers.drift_monitor.settings import DriftSettings
from workers.inference.settings import WorkerSettings


def test_names_are_flattened_with_prefix_and_delimiter() -> None:
    names = env_names(WorkerSettings)
    assert "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS" in names
    assert "LINEWATCH_BATCHING__MAX_BATCH_SIZE" in names
    assert "LINEWATCH_MODEL_STORE" in names
    assert "LINEWATCH_KAFKA" in names  # a whole section as JSON
    assert "LINEWATCH_BOOTSTRAP_SERVERS" not in names


def test_required_and_secret_flags() -> None:
    variables = {v.name: v for v in env_vars(WorkerSettings)}
    assert variables["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"].required
    assert variables["LINEWATCH_REDIS__URL"].required and variables["LINEWATCH_REDIS__URL"].secret
    assert not variables["LINEWATCH_GROUP_ID"].required
    assert variables["LINEWATCH_GROUP_ID"].default == "linewatch-workers"
    dashboard = {v.name: v for v in env_vars(DashboardSettings)}
    assert dashboard["LINEWATCH_HTTP__PORT"].default == "8080"


def test_catalogued_names_are_what_the_classes_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "docs")  # no stray .env
    monkeypatch.setenv("LINEWATCH_REDIS__URL", "redis://example:6379/2")
    monkeypatch.setenv("LINEWATCH_MODEL_STORE", "/models")
    monkeypatch.setenv("LINEWATCH_DRIFT__WINDOW", "321")
    monkeypatch.setenv("LINEWATCH_DRIFT__METHOD", "psi")
    monkeypatch.setenv("LINEWATCH_LINES", '["tiles", "caps"]')
    monkeypatch.setenv("LINEWATCH_HTTP__PORT", "9999")
    for name in ("LINEWATCH_DRIFT__WINDOW", "LINEWATCH_DRIFT__METHOD", "LINEWATCH_LINES"):
        assert name in env_names(DriftSettings)
    settings = DriftSettings()
    assert settings.drift.window == 321
    assert settings.drift.method.value == "psi"
    assert settings.lines == ["tiles", "caps"]
    assert settings.http.port == 9999
    assert settings.redis.url.get_secret_value() == "redis://example:6379/2"


def test_inconsistent_drift_bounds_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "docs")
    monkeypatch.setenv("LINEWATCH_REDIS__URL", "redis://example:6379/2")
    monkeypatch.setenv("LINEWATCH_MODEL_STORE", "/models")
    monkeypatch.setenv("LINEWATCH_DRIFT__CLEAR_BELOW", "0.5")
    with pytest.raises(ValueError, match="clear_below"):
        DriftSettings()


def test_committed_configuration_doc_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), ROOT_DOC_NOTE


def test_generator_check_mode() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
