"""Every process a deploy file starts: Dockerfiles, compose services, Kubernetes workloads.

An entry point is what a container runs (``python -m MODULE ARGS``) with the environment
the deploy file gives it (image ``ENV`` + compose ``environment`` / Kubernetes ``env`` and
``envFrom``). Nothing is left out: each is started by ``test_entry_points.py`` and, when
it is a long-running process (it has a health check or probe), by the integration test
``tests/integration/test_deploy_start.py`` up to ``/healthz``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from tests.unit.deploy.conftest import MODULE_TO_PROCESS, PLATFORM_VALUE
from tests.unit.deploy.deploy_files import (
    K8S,
    Dockerfile,
    containers,
    dockerfiles,
    image_repository,
    load_compose,
    python_module,
    render,
)

OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
#: Keys of the Secret that production creates outside kustomize (deploy/k8s/README.md).
EXTERNAL_SECRETS_EXAMPLE = K8S / "secrets.example.env"


@dataclass(frozen=True)
class EntryPoint:
    """One process a deploy file starts.

    Attributes:
        where: The deploy file and the service / workload in it.
        image: Image repository (``linewatch/...``).
        module: ``python -m`` module.
        args: Arguments after the module.
        env: Environment the deploy file gives it (``None``: the image alone, no service).
        long_running: Whether it has a health check or probe (else it is a job or a tool).
        own: Names set for this process alone (compose ``environment``, container ``env``);
            the rest comes from sources shared by several processes (image, ConfigMap).
    """

    where: str
    image: str
    module: str
    args: tuple[str, ...]
    env: dict[str, str] | None = field(default=None, compare=False, hash=False)
    long_running: bool = False
    own: frozenset[str] = frozenset()

    @property
    def process(self) -> str:
        """The process name of the module (``devtools.settings_catalog``)."""
        return MODULE_TO_PROCESS[self.module]


def has_model(dockerfile: Dockerfile) -> bool:
    """Whether the image installs the model extra (torch), alone or with other extras."""
    return any(
        "pip install" in run and "model" in extras.split(",")
        for run in dockerfile.runs
        for extras in re.findall(r"\.\[([a-z0-9_,-]+)\]", run)
    )


def _module_and_args(dockerfile: Dockerfile, command: list[str] | None) -> tuple[str, tuple]:
    argv = dockerfile.entrypoint + list(dockerfile.cmd if command is None else command)
    module = python_module(argv)
    assert module is not None, f"{dockerfile.path.name}: {argv} is not a python -m entry point"
    return module, tuple(argv[3:])


def external_secret_keys() -> dict[str, str]:
    """Example values of the externally created Secret's keys."""
    values = {}
    for line in EXTERNAL_SECRETS_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _from_refs(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            (config,) = [d for d in documents
                         if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
            values.update(config.get("data", {}))
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            found = [d for d in documents
                     if d["kind"] == "Secret" and d["metadata"]["name"] == name]
            if found:
                values.update({k: base64.b64decode(v).decode()
                               for k, v in found[0].get("data", {}).items()})
                values.update(found[0].get("stringData", {}))
            else:  # created outside kustomize (production): its documented keys
                values.update(external_secret_keys())
    return values


def kubernetes_environment(documents: list[dict[str, Any]], container: dict[str, Any],
                           dockerfile: Dockerfile) -> dict[str, str]:
    """What a container's process sees: image ENV, envFrom, then env (later wins)."""
    env = dict(dockerfile.env)
    env.update(_from_refs(documents, container))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", PLATFORM_VALUE)
    return env


def compose_environment(service: dict[str, Any], dockerfile: Dockerfile) -> dict[str, str]:
    """What a compose service's process sees: image ENV, then ``environment``."""
    return {**dockerfile.env, **{k: str(v) for k, v in service.get("environment", {}).items()}}


def _compose_long_running(service: dict[str, Any], dockerfile: Dockerfile) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    return bool(dockerfile.healthcheck)


def entry_points() -> list[EntryPoint]:
    """Every entry point of every Dockerfile, compose service and Kubernetes workload."""
    images = dockerfiles()
    found: list[EntryPoint] = []
    for dockerfile in images.values():
        module, args = _module_and_args(dockerfile, None)
        found.append(EntryPoint(f"{dockerfile.path.name} CMD", dockerfile.image, module, args,
                                None, bool(dockerfile.healthcheck)))
    for name, service in load_compose()["services"].items():
        if not service["image"].startswith("linewatch/"):
            continue
        repository = image_repository(service["image"])
        dockerfile = images[repository]
        module, args = _module_and_args(dockerfile, service.get("command"))
        found.append(EntryPoint(f"docker-compose.yml service {name}", repository, module, args,
                                compose_environment(service, dockerfile),
                                _compose_long_running(service, dockerfile),
                                frozenset(service.get("environment", {}))))
    for overlay in OVERLAYS:
        documents = render(overlay)
        for document in documents:
            for container in containers(document):
                repository = image_repository(container["image"])
                dockerfile = images[repository]
                module, args = _module_and_args(dockerfile, container.get("args"))
                probes = any(key.endswith("Probe") for key in container)
                found.append(EntryPoint(
                    f"k8s/{overlay.name} {document['kind']}/{document['metadata']['name']}",
                    repository, module, args,
                    kubernetes_environment(documents, container, dockerfile), probes,
                    frozenset(item["name"] for item in container.get("env", []))))
    return found
