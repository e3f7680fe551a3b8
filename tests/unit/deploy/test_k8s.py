"""Kubernetes manifests: every file parses, kustomizations build, workloads are consistent
with the images, the settings classes, the served endpoints and the measured throughput."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.conftest import MODULE_TO_PROCESS
from tests.unit.deploy.deploy_files import (
    K8S,
    ROOT,
    Dockerfile,
    containers,
    image_repository,
    kubectl,
    kubectl_kustomize,
    load_yaml_documents,
    pod_spec,
    python_module,
    render,
    render_kustomization,
)
from tests.unit.deploy.entry_points import external_secret_keys, kubernetes_environment
from tests.unit.deploy.probe_servers import serving, status_of
from workers.inference.settings import WorkerSettings

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


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kubectl_kustomize_builds_the_overlay_as_the_tests_read_it(overlay: Path) -> None:
    """``kubectl kustomize`` builds each overlay; where kubectl is missing the tests read
    the overlays with deploy_files.render_kustomization, which must build the same."""
    if kubectl() is None:
        pytest.skip("kubectl is not installed here: the overlays are read with the tests' "
                    "own kustomize reader")
    built = kubectl_kustomize(overlay)
    ours = render_kustomization(overlay)

    def key(document: dict[str, Any]) -> str:
        return yaml.safe_dump(document, sort_keys=True)

    assert sorted(map(key, built)) == sorted(map(key, ours))


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


def test_workload_images_are_built_by_the_dockerfiles(
    rendered: list[dict[str, Any]], images: dict[str, Dockerfile]
) -> None:
    for document in rendered:
        for container in containers(document):
            repository = image_repository(container["image"])
            assert repository in images, f"{container['image']}: no Dockerfile builds it"
            _process(container, images)  # a known process (its start: test_entry_points)


def test_config_and_secret_names_are_settings(
    rendered: list[dict[str, Any]], settings_facts
) -> None:
    for document in _by_kind(rendered, "ConfigMap") + _by_kind(rendered, "Secret"):
        names = set(document.get("data", {})) | set(document.get("stringData", {}))
        unknown = sorted(n for n in names if n not in settings_facts.any_valid)
        assert not unknown, f"{document['metadata']['name']}: {unknown} are no settings"


def test_no_secret_values_in_the_production_layout() -> None:
    """An ``apply -k`` never overwrites the real Secret: production renders none, and every
    key KEDA reads from it is in the documented example."""
    documents = render(K8S / "overlays" / "gpu")
    assert not _by_kind(documents, "Secret")
    keys = set(external_secret_keys())
    for auth in _by_kind(documents, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "linewatch-secrets" and ref["key"] in keys, ref
    assert not _by_kind(render(K8S / "base"), "Secret"), "the base holds no Secret"


def test_keda_authenticates_like_the_workers(
    rendered: list[dict[str, Any]], images: dict[str, Dockerfile]
) -> None:
    """SASL/TLS settings of the workers and of the KEDA trigger agree."""
    worker = _one(rendered, "Deployment", "linewatch-worker")
    (container,) = containers(worker)
    env = kubernetes_environment(rendered, container,
                                 images[image_repository(container["image"])])
    (trigger,) = _one(rendered, "ScaledObject", "linewatch-worker")["spec"]["triggers"]
    protocol = env.get("LINEWATCH_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT")
    metadata = trigger["metadata"]
    assert metadata["bootstrapServers"] == env["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"]
    assert metadata.get("tls", "disable") == ("enable" if protocol.endswith("SSL") else "disable")
    if not protocol.startswith("SASL"):
        assert metadata.get("sasl", "none") == "none" and "authenticationRef" not in trigger
        return
    mechanism = env["LINEWATCH_KAFKA__SASL_MECHANISM"].lower().replace("-", "_")
    assert metadata["sasl"] == mechanism.replace("scram_sha_", "scram_sha")
    auth = _one(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    assert refs == {"username": "LINEWATCH_KAFKA__SASL_USERNAME",
                    "password": "LINEWATCH_KAFKA__SASL_PASSWORD"}


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
    assert trigger["metadata"]["offsetResetPolicy"] == "earliest", "as the workers' consumers"
    assert trigger["metadata"]["limitToPartitionsWithLag"] == "true"
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
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


def test_pods_run_unprivileged_with_a_group_for_volumes(rendered: list[dict[str, Any]]) -> None:
    for document in rendered:
        if document["kind"] not in ("Deployment", "CronJob", "Job"):
            continue
        where = f"{document['kind']}/{document['metadata']['name']}"
        pod = pod_spec(document)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        if any(v.get("persistentVolumeClaim") for v in pod.get("volumes", [])):
            assert pod["securityContext"]["fsGroup"] == 10001, where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_a_refused_refit_is_not_retried(rendered: list[dict[str, Any]]) -> None:
    from workers.trainer.main import EXIT_REFUSED, EXIT_USAGE

    for cronjob in _by_kind(rendered, "CronJob"):
        job = cronjob["spec"]["jobTemplate"]["spec"]
        (container,) = containers(cronjob)
        codes = {code for rule in job["podFailurePolicy"]["rules"]
                 if rule["action"] == "FailJob" and "onExitCodes" in rule
                 and rule["onExitCodes"]["containerName"] == container["name"]
                 and rule["onExitCodes"]["operator"] == "In"
                 for code in rule["onExitCodes"]["values"]}
        assert {EXIT_REFUSED, EXIT_USAGE} <= codes
        assert pod_spec(cronjob)["restartPolicy"] == "Never"


def test_workers_have_a_disruption_budget(rendered: list[dict[str, Any]]) -> None:
    worker = _one(rendered, "Deployment", "linewatch-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"].items()
    budgets = [pdb for pdb in _by_kind(rendered, "PodDisruptionBudget")
               if pdb["spec"]["selector"]["matchLabels"].items() <= labels]
    assert len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1


def test_topics_are_created_in_the_cluster(rendered: list[dict[str, Any]], images) -> None:
    jobs = [d for d in _by_kind(rendered, "Job") for c in containers(d)
            if _process(c, images) == "topics"]
    assert len(jobs) == 1


def test_worker_shutdown_bound_is_below_the_grace_period(rendered: list[dict[str, Any]],
                                                          images) -> None:
    """SIGTERM -> the worker stops within SHUTDOWN_TIMEOUT_S, before Kubernetes SIGKILLs."""
    checked = 0
    for document in _by_kind(rendered, "Deployment"):
        spec = pod_spec(document)
        for container in containers(document):
            if _process(container, images) != "worker":
                continue
            env = kubernetes_environment(rendered, container,
                                         images[image_repository(container["image"])])
            default = WorkerSettings.model_fields["shutdown_timeout_s"].default
            bound = float(env.get("LINEWATCH_SHUTDOWN_TIMEOUT_S", default))
            grace = spec.get("terminationGracePeriodSeconds", 30)
            assert bound + 5 <= grace, (bound, grace)
            checked += 1
    assert checked
