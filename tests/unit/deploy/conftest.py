"""Shared facts for the deployment checks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from devtools.settings_catalog import (
    PROCESS_MODULES,
    SETTINGS_CLASSES,
    env_names,
    load_settings_class,
)
from tests.unit.deploy.deploy_files import Dockerfile, dockerfiles

MODULE_TO_PROCESS = {module: process for process, module in PROCESS_MODULES.items()}

#: Stand-in for values a deploy file takes from the platform (fieldRef, resourceFieldRef).
PLATFORM_VALUE = "from-the-platform"


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Only these LINEWATCH_ variables set (others removed) while the block runs."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("LINEWATCH_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)
        os.environ.update(saved)


class SettingsFacts:
    """Valid LINEWATCH_ names per process, and validation by the real settings classes."""

    def __init__(self) -> None:
        self.classes: dict[str, type[BaseSettings]] = {}
        for process in SETTINGS_CLASSES:
            settings_class = load_settings_class(process)
            assert settings_class is not None, f"{process}: {SETTINGS_CLASSES[process]} missing"
            self.classes[process] = settings_class
        self.valid = {process: env_names(cls) for process, cls in self.classes.items()}
        self.any_valid = set().union(*self.valid.values())

    def check_names(self, process: str, own: set[str], shared: set[str], where: str) -> None:
        """Names set for this process are its fields; shared ones are some process's."""
        unknown = sorted({n for n in own if n.startswith("LINEWATCH_")} - self.valid[process])
        assert not unknown, f"{where}: {unknown} are not fields of the {process} settings"
        unknown = sorted({n for n in shared if n.startswith("LINEWATCH_")} - self.any_valid)
        assert not unknown, f"{where}: {unknown} are not fields of any process's settings"

    def check_valid(self, process: str, env: Mapping[str, str], where: str,
                    tmp_dir: str) -> None:
        """The process's settings class accepts exactly this environment (no .env file)."""
        with environment(env):
            cwd = os.getcwd()
            os.chdir(tmp_dir)  # no stray .env
            try:
                self.classes[process]()
            except ValidationError as error:
                raise AssertionError(f"{where}: the {process} settings refuse this "
                                     f"environment:\n{error}") from None
            finally:
                os.chdir(cwd)


@pytest.fixture(scope="session")
def settings_facts() -> SettingsFacts:
    return SettingsFacts()


@pytest.fixture(scope="session")
def images() -> dict[str, Dockerfile]:
    return dockerfiles()
