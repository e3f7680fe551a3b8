"""docker-compose.yml: services, images, GPU reservation, env names, health checks."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.unit.deploy.conftest import MODULE_TO_PROCESS
from tests.unit.deploy.deploy_files import (
    COMPOSE_FILE,
    DEPLOY,
    K8S,
    ROOT,
    Dockerfile,
    image_repository,
    load_compose,
    load_yaml_documents,
    python_module,
)
from tests.unit.deploy.probe_servers import serving, status_of


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _linewatch_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service["image"].startswith("linewatch/")
    }


def _process(service: dict[str, Any], images: dict[str, Dockerfile]) -> str:
    dockerfile = images[image_repository(service["image"])]
    command = service.get("command", dockerfile.cmd)
    module = python_module(dockerfile.entrypoint + list(command))
    assert module in MODULE_TO_PROCESS, f"{service['image']} {command}: unknown process"
    return MODULE_TO_PROCESS[module]


def test_kafka_runs_in_kraft_mode_from_the_official_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("zookeeper" in s.get("image", "") for s in services.values())


def test_required_services(compose: dict[str, Any], images: dict[str, Dockerfile]) -> None:
    services = compose["services"]
    processes = [_process(s, images) for s in _linewatch_services(compose).values()]
    assert "redis" in services and services["redis"]["image"].startswith("redis:")
    assert processes.count("producer") >= 2, "one producer per sample camera"
    for process in ("worker", "trainer", "dashboard", "drift-monitor"):
        assert process in processes


def test_one_producer_per_distinct_camera(compose: dict[str, Any], images) -> None:
    cameras = [
        s["environment"]["LINEWATCH_CAMERA_ID"]
        for s in _linewatch_services(compose).values()
        if _process(s, images) == "producer"
    ]
    assert len(cameras) == len(set(cameras))


def test_gpu_services_reserve_an_nvidia_device(compose: dict[str, Any], images) -> None:
    for name, service in _linewatch_services(compose).items():
        if _process(service, images) not in ("worker", "trainer"):
            continue
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name


def test_images_come_from_the_dockerfiles(compose: dict[str, Any], images) -> None:
    for name, service in _linewatch_services(compose).items():
        repository = image_repository(service["image"])
        assert repository in images, f"{name}: no Dockerfile builds {repository}"
        if "build" in service:
            dockerfile = ROOT / service["build"]["dockerfile"]
            assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
            assert dockerfile == images[repository].path, name


def test_every_built_image_is_built_by_one_service(compose: dict[str, Any], images) -> None:
    built = [image_repository(s["image"]) for s in compose["services"].values() if "build" in s]
    used = {image_repository(s["image"]) for s in _linewatch_services(compose).values()}
    assert sorted(built) == sorted(set(built)) and set(built) == used


def test_depends_on_known_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_health_checks_hit_served_routes(compose: dict[str, Any], images) -> None:
    for name, service in _linewatch_services(compose).items():
        if "healthcheck" not in service or service["healthcheck"].get("disable"):
            continue
        process = _process(service, images)
        test = " ".join(service["healthcheck"]["test"])
        match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", test)
        assert match, name
        port = service["environment"].get(
            "LINEWATCH_HTTP__PORT",
            images[image_repository(service["image"])].env.get("LINEWATCH_HTTP__PORT"),
        )
        assert int(match.group(1)) == int(port), f"{name}: health check on the wrong port"
        with serving(process) as url:
            assert status_of(url + match.group(2)) != 404, f"{name}: {match.group(2)} not served"


def test_topics_are_created_with_the_autoscaler_cap_as_partitions(
        compose: dict[str, Any], images) -> None:
    """Partitions cap the worker count: compose's topics job, the Kubernetes one and KEDA's
    maxReplicaCount agree."""
    (topics,) = [s for s in _linewatch_services(compose).values()
                 if _process(s, images) == "topics"]
    scaled = next(d for d in load_yaml_documents(K8S / "base" / "worker-scaledobject.yaml")
                  if d["kind"] == "ScaledObject")
    job = next(d for d in load_yaml_documents(K8S / "base" / "topics-job.yaml"))
    job_env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]
               ["env"]}
    cap = scaled["spec"]["maxReplicaCount"]
    assert int(topics["environment"]["LINEWATCH_FRAMES_PARTITIONS"]) == cap
    assert int(job_env["LINEWATCH_FRAMES_PARTITIONS"]) == cap
    for name, service in compose["services"].items():
        for dependency, condition in service.get("depends_on", {}).items():
            if compose["services"][dependency] is topics:
                assert condition["condition"] == "service_completed_successfully", name


def test_kafka_keeps_its_log_in_the_volume_and_serves_host_tools(
        compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    (mount,) = [v for v in kafka["volumes"] if v.split(":")[0] in compose["volumes"]]
    assert env["KAFKA_LOG_DIRS"] == mount.split(":")[1], "the log lives in the named volume"
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    host_side = [name for name, address in listeners.items() if address.startswith("localhost:")]
    assert host_side, "an advertised listener reachable from the host"
    port = listeners[host_side[0]].split(":")[1]
    assert f"127.0.0.1:{port}:{port}" in kafka["ports"], "published on the host's loopback"
    assert f"{host_side[0]}:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                       check=False).returncode == 0
    if not plugin:
        pytest.skip("docker compose is not installed here: the file is checked by the "
                    "YAML-level tests of this module only")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr


def test_one_record_limit_and_a_bounded_worker_shutdown(compose: dict[str, Any], images) -> None:
    """Every process gets the same record limit, the broker accepts it, and the worker's
    shutdown bound is below its stop grace period."""
    from tests.unit.deploy.entry_points import compose_environment
    from workers.inference.settings import WorkerSettings

    broker = int(compose["services"]["kafka"]["environment"]["KAFKA_MESSAGE_MAX_BYTES"])
    limits = set()
    for service in _linewatch_services(compose).values():
        env = compose_environment(service, images[image_repository(service["image"])])
        if "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS" in env:
            limits.add(int(env.get("LINEWATCH_KAFKA__MAX_MESSAGE_BYTES", 0)))
        if _process(service, images) == "worker":
            grace = float(service["stop_grace_period"].rstrip("s"))
            default = WorkerSettings.model_fields["shutdown_timeout_s"].default
            assert float(env.get("LINEWATCH_SHUTDOWN_TIMEOUT_S", default)) + 5 <= grace
    assert len(limits) == 1 and 0 < limits.pop() <= broker
