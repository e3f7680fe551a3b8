"""Every entry point a deploy file names starts: ``--help``, its arguments, its settings.

No allow-list: the entry points are read from every Dockerfile, compose service and
Kubernetes workload (``entry_points.py``). Processes of an image without the model extra
run with torch, torchvision and safetensors made unimportable, as in that image. The
long-running ones are started up to ``/healthz`` in tests/integration/test_deploy_start.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.unit.deploy.conftest import SettingsFacts
from tests.unit.deploy.deploy_files import ROOT, Dockerfile
from tests.unit.deploy.entry_points import EntryPoint, entry_points, has_model

#: What an image without the [model] extra lacks.
MODEL_PACKAGES = ("torch", "torchvision", "safetensors")
_RUN = ("import runpy, sys\n"
        "for name in sys.argv[1].split(','):\n"
        "    if name: sys.modules[name] = None  # ImportError, as if not installed\n"
        "module = sys.argv[2]\n"
        "sys.argv = [module, *sys.argv[3:]]\n"
        "runpy.run_module(module, run_name='__main__', alter_sys=True)\n")

ENTRY_POINTS = entry_points()


def run_entry_point(module: str, args: tuple[str, ...], blocked: tuple[str, ...],
                    env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` with ``blocked`` packages unimportable."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    return subprocess.run(
        [sys.executable, "-c", _RUN, ",".join(blocked), module, *args],
        env={**clean, **env, "PYTHONPATH": str(ROOT)}, cwd=cwd, capture_output=True,
        text=True, timeout=180, check=False)


def blocked_for(entry: EntryPoint, images: dict[str, Dockerfile]) -> tuple[str, ...]:
    return () if has_model(images[entry.image]) else MODEL_PACKAGES


def test_every_deploy_file_names_entry_points() -> None:
    sources = {entry.where.split()[0] for entry in ENTRY_POINTS}
    assert {"lite.Dockerfile", "docker-compose.yml", "k8s/gpu", "k8s/cpu-dev"} <= sources
    assert len(ENTRY_POINTS) >= 20


def test_every_entry_point_starts_and_parses_its_arguments(
        images: dict[str, Dockerfile], tmp_path: Path) -> None:
    """``--help`` exits 0; the deploy file's own arguments are accepted (the process then
    stops at the settings, which this run does not give: exit 2, the field named)."""
    runs = {}
    for entry in ENTRY_POINTS:
        blocked = blocked_for(entry, images)
        runs[(entry.module, ("--help",), blocked)] = entry.where
        if "--help" not in entry.args:
            runs[(entry.module, entry.args, blocked)] = entry.where
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(runs, pool.map(
            lambda key: run_entry_point(key[0], key[1], key[2], {}, tmp_path), runs),
            strict=True))
    failures = []
    for (module, args, blocked), result in done.items():
        where = f"{runs[(module, args, blocked)]}: python -m {module} {' '.join(args)}"
        if "--help" in args:
            ok = result.returncode == 0 and "usage:" in result.stdout
        else:
            ok = result.returncode == 2 and "invalid settings" in result.stderr
        if not ok:
            failures.append(f"{where} (blocked {blocked}) -> {result.returncode}\n"
                            f"{result.stdout[-800:]}{result.stderr[-1500:]}")
    print(f"\n{len(done)} distinct runs for {len(ENTRY_POINTS)} entry points")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e.env is not None],
                         ids=lambda e: e.where)
def test_the_deploy_environment_is_what_the_settings_accept(
        entry: EntryPoint, settings_facts: SettingsFacts, tmp_path: Path) -> None:
    """Every LINEWATCH_ name is a field, and the settings class validates the whole
    environment (required fields present, SASL settings complete, values in range)."""
    settings_facts.check_names(entry.process, set(entry.own), set(entry.env), entry.where)
    settings_facts.check_valid(entry.process, entry.env, entry.where, str(tmp_path))


def test_images_without_the_model_extra_run_no_model_process(
        images: dict[str, Dockerfile]) -> None:
    model_processes = {"worker", "trainer", "drift-monitor"}
    for entry in ENTRY_POINTS:
        if entry.process in model_processes:
            assert has_model(images[entry.image]), f"{entry.where}: {entry.image} lacks torch"
    lite = [name for name, dockerfile in images.items() if not has_model(dockerfile)]
    assert lite, "the processes that never run the model have an image without torch"
