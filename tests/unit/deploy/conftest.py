"""Shared facts for the deployment checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings_catalog import (
    PROCESS_MODULES,
    SETTINGS_CLASSES,
    env_names,
    env_vars,
    load_settings_class,
)
from tests.unit.deploy.deploy_files import ROOT, Dockerfile, dockerfiles

#: Entry points written by other issues that are not in this checkout yet.
PENDING_MODULES = {
    "workers.inference": "inference worker (issue 3)",
    "workers.producer": "camera producer (issue 3)",
}

MODULE_TO_PROCESS = {module: process for process, module in PROCESS_MODULES.items()}


def module_exists(module: str) -> bool:
    base = ROOT / Path(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class SettingsFacts:
    """Valid and required LINEWATCH_ names per process, from the real settings classes."""

    def __init__(self) -> None:
        self.valid: dict[str, set[str]] = {}
        self.required: dict[str, set[str]] = {}
        self.pending: set[str] = set()
        for process in SETTINGS_CLASSES:
            settings_class = load_settings_class(process)
            if settings_class is None:
                self.pending.add(process)
                continue
            self.valid[process] = env_names(settings_class)
            self.required[process] = {v.name for v in env_vars(settings_class) if v.required}
        self.any_valid = set().union(*self.valid.values())

    def check_names(self, process: str, names: set[str], where: str) -> None:
        linewatch = {n for n in names if n.startswith("LINEWATCH_")}
        valid = self.valid.get(process, self.any_valid)
        unknown = sorted(linewatch - valid)
        assert not unknown, f"{where}: {unknown} are not fields of the {process} settings"

    def check_required(self, process: str, provided: set[str], where: str) -> None:
        if process in self.pending:
            return
        missing = sorted(self.required[process] - provided)
        assert not missing, f"{where}: required settings {missing} are not provided"


@pytest.fixture(scope="session")
def settings_facts() -> SettingsFacts:
    return SettingsFacts()


@pytest.fixture(scope="session")
def images() -> dict[str, Dockerfile]:
    return dockerfiles()
