"""Kubernetes manifests: every file parses, kustomizations build, workloads are consistent
with the images, the settings classes, the served endpoints and the measured throughput."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import WorkerSettings
from tests.unit.deploy.conftest import MODULE_TO_PROCESS, PENDING_MODULES, SettingsFacts
from tests.unit.deploy.deploy_files import (
    K8S,
    ROOT,
    Dockerfile,
    containers,
    image_repository,
    load_yaml_documents,
    pod_spec,
    python_module,
    render_kustomization,
)
from tests.unit.deploy.probe_servers import serving, status_of

OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
WORKLOAD_KINDS = {"Deployment", "CronJob"}


def _by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def _one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _by_kind(documents, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _process(container: dict[str, Any], images: dict[str, Dockerfile]) -> str:
    dockerfile = images[image_repository(container["image"])]
    argv = dockerfile.entrypoint + list(container.get("args", dockerfile.cmd))
    module = python_module(argv)
    assert module in MODULE_TO_PROCESS, f"{container['name']}: unknown process {argv}"
    return MODULE_TO_PROCESS[module]


def _env_sources(
    documents: list[dict[str, Any]], container: dict[str, Any]
) -> tuple[set[str], set[str]]:
    """(explicit env names, names from envFrom ConfigMaps/Secrets)."""
    explicit = {e["name"] for e in container.get("env", [])}
    from_refs: set[str] = set()
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                resource = _one(documents, kind, source[key]["name"])
                from_refs |= set(resource.get("data", {})) | set(resource.get("stringData", {}))
    return explicit, from_refs


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render_kustomization(request.param)


def test_every_manifest_parses_with_required_fields() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for document in load_yaml_documents(path):
            if document.get("kind") == "Kustomization":
                continue
            assert document.get("apiVersion"), path
            assert document.get("kind"), path
            assert document.get("metadata", {}).get("name"), path


def test_kustomization_resources_exist() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for resource in kustomization.get("resources", []):
            assert (path.parent / resource).exists(), f"{path}: {resource} missing"


def test_overlays_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"gpu", "cpu-dev"}


def test_workload_images_exist_and_entry_points_are_real(
    rendered: list[dict[str, Any]], images: dict[str, Dockerfile]
) -> None:
    for document in rendered:
        for container in containers(document):
            repository = image_repository(container["image"])
            assert repository in images, f"{container['image']}: no Dockerfile builds it"
            dockerfile = images[repository]
            module = python_module(dockerfile.entrypoint + list(container.get("args", [])))
            if module is not None:
                path = ROOT / Path(*module.split("."))
                assert path.with_suffix(".py").exists() or module in PENDING_MODULES, module


def test_env_names_exist_and_required_ones_are_provided(
    rendered: list[dict[str, Any]], images: dict[str, Dockerfile], settings_facts: SettingsFacts
) -> None:
    for document in _by_kind(rendered, "ConfigMap") + _by_kind(rendered, "Secret"):
        names = set(document.get("data", {})) | set(document.get("stringData", {}))
        unknown = sorted(n for n in names if n not in settings_facts.any_valid)
        assert not unknown, f"{document['metadata']['name']}: {unknown} are no settings"
    for document in rendered:
        for container in containers(document):
            process = _process(container, images)
            explicit, from_refs = _env_sources(rendered, container)
            where = f"{document['kind']}/{document['metadata']['name']}"
            settings_facts.check_names(process, explicit, where)
            baked = set(images[image_repository(container["image"])].env)
            settings_facts.check_required(process, explicit | from_refs | baked, where)


def test_probes_hit_served_routes_on_the_settings_port(
    rendered: list[dict[str, Any]], images: dict[str, Dockerfile]
) -> None:
    paths: dict[str, set[str]] = {}
    for document in _by_kind(rendered, "Deployment"):
        for container in containers(document):
            process = _process(container, images)
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert ports["http"] == int(env["LINEWATCH_HTTP__PORT"]), document["metadata"]
            probes = {k: container[k] for k in container if k.endswith("Probe")}
            assert {"readinessProbe", "livenessProbe"} <= set(probes)
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
            for probe in probes.values():
                assert probe["httpGet"]["port"] == "http"
                paths.setdefault(process, set()).add(probe["httpGet"]["path"])
    assert set(paths) >= {"worker", "producer", "drift-monitor", "dashboard"}
    for process, process_paths in paths.items():
        with serving(process) as url:
            for path in sorted(process_paths):
                assert status_of(url + path) != 404, f"{process}: {path} is not served"


def test_worker_requests_gpus_in_the_gpu_layout(images: dict[str, Dockerfile]) -> None:
    for overlay, expect_gpu in (("gpu", True), ("cpu-dev", False)):
        documents = render_kustomization(K8S / "overlays" / overlay)
        worker = _one(documents, "Deployment", "linewatch-worker")
        (container,) = containers(worker)
        resources = container["resources"]
        has_gpu = "nvidia.com/gpu" in resources["requests"]
        assert has_gpu == expect_gpu, overlay
        if expect_gpu:
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
            assert "cuda" in image_repository(container["image"])
        else:
            assert image_repository(container["image"]) == "linewatch/worker-cpu"
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["LINEWATCH_DEVICE"] == "cpu"


def _measured_lag_threshold() -> int:
    text = (ROOT / "docs" / "scaling.md").read_text()
    match = re.search(r"<!-- lag-threshold: fps=([\d.]+) drain_s=([\d.]+) -->", text)
    assert match, "docs/scaling.md must record the measured throughput"
    return math.floor(float(match.group(1)) * float(match.group(2)))


def test_scaled_object_follows_the_workers(rendered: list[dict[str, Any]]) -> None:
    scaled = _one(rendered, "ScaledObject", "linewatch-worker")
    worker = _one(rendered, "Deployment", "linewatch-worker")
    config = _one(rendered, "ConfigMap", "linewatch-config")["data"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    env = {e["name"]: e.get("value") for e in containers(worker)[0]["env"]}
    group = env.get("LINEWATCH_GROUP_ID", WorkerSettings.model_fields["group_id"].default)
    assert trigger["metadata"]["consumerGroup"] == group
    assert trigger["metadata"]["topic"] == config["LINEWATCH_KAFKA__FRAMES_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == config["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"]
    assert int(trigger["metadata"]["lagThreshold"]) == _measured_lag_threshold()
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]


def test_one_trainer_cronjob_per_line(rendered: list[dict[str, Any]]) -> None:
    producer_lines = {
        e["value"]
        for d in _by_kind(rendered, "Deployment")
        for c in containers(d)
        for e in c.get("env", [])
        if e["name"] == "LINEWATCH_PRODUCT_LINE"
    }
    trained = {}
    for cronjob in _by_kind(rendered, "CronJob"):
        (container,) = containers(cronjob)
        args = container["args"]
        assert args[0] == "--line"
        trained[args[1]] = cronjob
        assert cronjob["metadata"]["name"].endswith(args[1])
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        assert pod_spec(cronjob)["restartPolicy"] == "Never"
    assert producer_lines and producer_lines <= set(trained)


def test_producers_are_single_replica_per_camera(rendered: list[dict[str, Any]], images) -> None:
    cameras = []
    for document in _by_kind(rendered, "Deployment"):
        (container,) = containers(document)
        if _process(container, images) != "producer":
            continue
        assert document["spec"]["replicas"] == 1
        assert document["spec"]["strategy"]["type"] == "Recreate"
        env = {e["name"]: e.get("value") for e in container["env"]}
        cameras.append(env["LINEWATCH_CAMERA_ID"])
    assert len(cameras) >= 2 and len(cameras) == len(set(cameras))
