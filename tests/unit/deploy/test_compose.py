"""docker-compose.yml: services, images, GPU reservation, env names, health checks."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.deploy.conftest import MODULE_TO_PROCESS, SettingsFacts
from tests.unit.deploy.deploy_files import (
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


def test_env_names_exist_and_required_ones_are_set(
    compose: dict[str, Any], images: dict[str, Dockerfile], settings_facts: SettingsFacts
) -> None:
    for name, service in _linewatch_services(compose).items():
        process = _process(service, images)
        env = set(service.get("environment", {}))
        settings_facts.check_names(process, env, f"compose service {name}")
        provided = env | set(images[image_repository(service["image"])].env)
        settings_facts.check_required(process, provided, f"compose service {name}")


def test_depends_on_known_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_health_checks_hit_served_routes(compose: dict[str, Any], images) -> None:
    for name, service in _linewatch_services(compose).items():
        if "healthcheck" not in service:
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


def test_partitions_equal_the_autoscaler_cap(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    match = re.search(r"--topic linewatch\.frames --partitions (\d+)", script)
    assert match
    scaled = next(
        d
        for d in load_yaml_documents(K8S / "base" / "worker-scaledobject.yaml")
        if d["kind"] == "ScaledObject"
    )
    assert int(match.group(1)) == scaled["spec"]["maxReplicaCount"]
