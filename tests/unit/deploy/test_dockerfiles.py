"""Dockerfiles: images, settings env names, ports, health checks, what each installs.

That every image's entry point starts: test_entry_points.py."""

from __future__ import annotations

import re

from tests.unit.deploy.conftest import MODULE_TO_PROCESS, SettingsFacts
from tests.unit.deploy.deploy_files import ROOT, Dockerfile, load_compose, python_module
from tests.unit.deploy.entry_points import has_model

EXPECTED_IMAGES = {
    "linewatch/worker-cpu",
    "linewatch/worker-cuda",
    "linewatch/lite",
    "linewatch/trainer",
}


def test_every_expected_image_has_a_dockerfile(images: dict[str, Dockerfile]) -> None:
    assert set(images) == EXPECTED_IMAGES


def test_cuda_images_use_a_cuda_base(images: dict[str, Dockerfile]) -> None:
    for name in ("linewatch/worker-cuda", "linewatch/trainer"):
        assert any(b.startswith("nvidia/cuda:") for b in images[name].base_images), name
    assert not any("cuda" in b for b in images["linewatch/worker-cpu"].base_images)


def test_entry_points_are_processes(images: dict[str, Dockerfile]) -> None:
    for dockerfile in images.values():
        module = python_module(dockerfile.entrypoint + dockerfile.cmd)
        assert module is not None, f"{dockerfile.path.name}: not a python -m entry point"
        assert module in MODULE_TO_PROCESS, f"{dockerfile.path.name}: unknown process {module}"


def test_only_the_model_images_install_torch(images: dict[str, Dockerfile]) -> None:
    for name, dockerfile in images.items():
        torch_runs = [run for run in dockerfile.runs if "torch" in run]
        if name == "linewatch/lite":
            assert not has_model(dockerfile) and not torch_runs, name
        else:
            assert has_model(dockerfile) and torch_runs, name


def test_named_volume_mount_points_belong_to_the_user(images: dict[str, Dockerfile]) -> None:
    """An empty named volume takes the owner of the image's directory: a root-owned one
    would keep the uid-10001 processes from writing (the trainer writes /models)."""
    compose = load_compose()
    named = set(compose.get("volumes", {}))
    for service_name, service in compose["services"].items():
        if not service["image"].startswith("linewatch/"):
            continue
        dockerfile = images[service["image"].split(":")[0]]
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source not in named:
                continue
            created = [run for run in dockerfile.runs
                       if f"mkdir -p {target}" in run and f"chown {dockerfile.user}" in run]
            assert created, (f"{service_name}: {dockerfile.path.name} does not create "
                             f"{target} owned by {dockerfile.user}")


def test_copied_paths_exist(images: dict[str, Dockerfile]) -> None:
    for dockerfile in images.values():
        for copy in dockerfile.copies:
            source = copy.split()[0]
            assert (ROOT / source).exists(), f"{dockerfile.path.name}: COPY {source} missing"


def test_env_names_are_settings_fields(
    images: dict[str, Dockerfile], settings_facts: SettingsFacts
) -> None:
    for dockerfile in images.values():
        module = python_module(dockerfile.entrypoint + dockerfile.cmd)
        process = MODULE_TO_PROCESS[module]
        settings_facts.check_names(process, set(), set(dockerfile.env), dockerfile.path.name)


def test_non_root_and_health_check_on_the_exposed_port(images: dict[str, Dockerfile]) -> None:
    for dockerfile in images.values():
        assert dockerfile.user and dockerfile.user not in ("root", "0"), dockerfile.path.name
        if dockerfile.image == "linewatch/trainer":
            continue  # a batch job: no HTTP endpoint
        port = int(dockerfile.env["LINEWATCH_HTTP__PORT"])
        assert dockerfile.expose == [port], dockerfile.path.name
        assert dockerfile.env["LINEWATCH_HTTP__HOST"] == "0.0.0.0"
        match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", dockerfile.healthcheck)
        assert match, f"{dockerfile.path.name}: no HTTP health check"
        assert int(match.group(1)) == port and match.group(2) == "/healthz"
