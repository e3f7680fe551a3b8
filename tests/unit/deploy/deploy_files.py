"""Readers for the deployment files: Dockerfiles, compose, kustomize (resources, images,
JSON 6902 patches), enough to check them without Docker or kubectl."""

from __future__ import annotations

import base64
import copy
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DOCKER_DIR = DEPLOY / "docker"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
IMAGE_PREFIX = "linewatch/"


@dataclass
class Dockerfile:
    """What the tests need from one Dockerfile."""

    path: Path
    image: str  # linewatch/<file stem>
    base_images: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)
    user: str | None = None
    healthcheck: str = ""
    copies: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    return yaml.safe_load(rest) if rest.startswith("[") else shlex.split(rest)


def read_dockerfile(path: Path) -> Dockerfile:
    """Parse the instructions the checks look at."""
    parsed = Dockerfile(path=path, image=IMAGE_PREFIX + path.name.removesuffix(".Dockerfile"))
    for keyword, rest in _instructions(path.read_text()):
        if keyword == "FROM":
            parsed.base_images.append(rest.split()[0])
        elif keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                parsed.env[name] = value
        elif keyword == "ENTRYPOINT":
            parsed.entrypoint = _exec_form(rest)
        elif keyword == "CMD":
            parsed.cmd = _exec_form(rest)
        elif keyword == "EXPOSE":
            parsed.expose += [int(p.split("/")[0]) for p in rest.split()]
        elif keyword == "USER":
            parsed.user = rest
        elif keyword == "HEALTHCHECK":
            parsed.healthcheck = rest
        elif keyword == "COPY":
            parsed.copies.append(rest)
        elif keyword == "RUN":
            parsed.runs.append(rest)
    return parsed


def dockerfiles() -> dict[str, Dockerfile]:
    """Every Dockerfile under deploy/docker, keyed by its image name."""
    files = [read_dockerfile(p) for p in sorted(DOCKER_DIR.glob("*.Dockerfile"))]
    return {f.image: f for f in files}


def python_module(argv: list[str]) -> str | None:
    """The module of a ``python -m <module> ...`` command line."""
    if len(argv) >= 3 and argv[0].startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def image_repository(image: str) -> str:
    """``registry/linewatch/x:tag`` -> ``linewatch/x``."""
    without_tag = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    parts = without_tag.split("/")
    return "/".join(parts[-2:])


def load_compose() -> dict[str, Any]:
    """The compose file with YAML anchors and merge keys resolved."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty documents of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 add/remove/replace operations in place (paths must exist)."""
    for operation in operations:
        tokens = [_unescape(t) for t in operation["path"].lstrip("/").split("/")]
        parent: Any = document
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        op = operation["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, operation["value"])
            elif op == "remove":
                del parent[index]
            elif op == "replace":
                parent[index] = operation["value"]
            else:
                raise ValueError(f"unsupported op {op}")
        else:
            if op in ("remove", "replace") and last not in parent:
                raise KeyError(f"{operation['path']} does not exist")
            if op == "remove":
                del parent[last]
            elif op in ("add", "replace"):
                parent[last] = operation["value"]
            else:
                raise ValueError(f"unsupported op {op}")


def _matches(document: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = document["apiVersion"].rpartition("/")
    return (
        document["kind"] == target.get("kind", document["kind"])
        and document["metadata"]["name"] == target.get("name", document["metadata"]["name"])
        and group == target.get("group", group)
        and version == target.get("version", version)
    )


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {})
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {}).get("spec", {}).get("containers", [])


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes strategic merge for the shapes used here: maps merge (``null`` deletes a
    key), lists of maps with a ``name`` merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    named = (isinstance(base, list) and isinstance(patch, list)
             and all(isinstance(x, dict) and "name" in x for x in base + patch))
    if named:
        by_name = {item["name"]: item for item in base}
        patched = {item["name"]: strategic_merge(by_name.get(item["name"], {}), item)
                   for item in patch}
        # kustomize puts the patch's items first, then the untouched ones
        return list(patched.values()) + [i for i in base if i["name"] not in patched]
    return copy.deepcopy(patch)


def _generated_secrets(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    options = kustomization.get("generatorOptions", {})
    if kustomization.get("secretGenerator") and not options.get("disableNameSuffixHash"):
        raise ValueError("only generators with disableNameSuffixHash are rendered here")
    secrets = []
    for generator in kustomization.get("secretGenerator", []):
        data = {}
        for literal in generator.get("literals", []):
            name, _, value = literal.partition("=")
            data[name] = base64.b64encode(value.encode()).decode()
        secrets.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": generator["name"]}, "data": data})
    return secrets


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Build a kustomization the way ``kubectl kustomize`` does for the features used here
    (resources, namespace, labels, images, secret generators, strategic merge patches and
    JSON 6902 patches with a target). ``render`` prefers kubectl where it is installed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            documents += render_kustomization(path)
        else:
            documents += copy.deepcopy(load_yaml_documents(path))
    for group in kustomization.get("labels", []):
        for document in documents:
            document["metadata"].setdefault("labels", {}).update(group["pairs"])
    documents += _generated_secrets(kustomization)
    namespace = kustomization.get("namespace")
    if namespace:
        for document in documents:
            if document["kind"] != "Namespace":
                document["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for document in documents:
            for container in _containers(document):
                repository = container["image"].split(":")[0]
                if repository == image["name"]:
                    name = image.get("newName", repository)
                    tag = image.get("newTag")
                    container["image"] = f"{name}:{tag}" if tag else name
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load(patch["patch"])
        if isinstance(body, list):  # JSON 6902
            targets = [d for d in documents if _matches(d, patch["target"])]
            if len(targets) != 1:
                raise ValueError(f"patch target {patch['target']} matches {len(targets)}")
            apply_json_patch(targets[0], body)
            continue
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        index = next(i for i, d in enumerate(documents) if _matches(d, target))
        documents[index] = strategic_merge(documents[index], body)
    return documents


def kubectl() -> str | None:
    """kubectl, when installed (``kubectl kustomize`` needs no cluster)."""
    return shutil.which("kubectl")


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``, parsed."""
    done = subprocess.run([kubectl() or "kubectl", "kustomize", str(directory)],
                          capture_output=True, text=True, timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """The manifests of a kustomization: kubectl's build where kubectl exists, else ours."""
    return kubectl_kustomize(directory) if kubectl() else render_kustomization(directory)


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers of a Deployment, Job or CronJob (empty for other kinds)."""
    return _containers(document)


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    """Pod spec of a Deployment or CronJob."""
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]
