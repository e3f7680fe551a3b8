"""Catalogue of the processes' settings classes and the environment variables they read.

Walks the pydantic-settings classes (nested sections included) to list every
``LINEWATCH_*`` variable with its type, default and description. Used by
``scripts/gen_config_docs.py`` (writes ``docs/configuration.md``) and by the deployment
tests, which check that compose files and manifests only set variables that exist.
"""

from __future__ import annotations

import enum
import importlib
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

#: Process -> ``module:Class`` of its settings, in the order the docs list them.
SETTINGS_CLASSES: dict[str, str] = {
    "producer": "workers.producer.settings:ProducerSettings",
    "worker": "workers.inference.settings:WorkerSettings",
    "alert-subscriber": "workers.alert_subscriber.settings:AlertSubscriberSettings",
    "trainer": "workers.trainer.settings:TrainerSettings",
    "drift-monitor": "workers.drift_monitor.settings:DriftSettings",
    "dashboard": "workers.dashboard.settings:DashboardSettings",
    "dead-letters": "workers.dead_letters.settings:DeadLetterSettings",
    "topics": "workers.topics.settings:TopicsSettings",
}

ROOT_DOC_NOTE = "docs/configuration.md is out of date: run python scripts/gen_config_docs.py"

#: Entry-point module of each process (``python -m <module>``).
PROCESS_MODULES: dict[str, str] = {
    "producer": "workers.producer",
    "worker": "workers.inference",
    "alert-subscriber": "workers.alert_subscriber",
    "trainer": "workers.trainer",
    "drift-monitor": "workers.drift_monitor",
    "dashboard": "workers.dashboard",
    "dead-letters": "workers.dead_letters",
    "topics": "workers.topics",
}


@dataclass(frozen=True)
class EnvVar:
    """One environment variable a settings class reads.

    Attributes:
        name: Full variable name, e.g. ``LINEWATCH_KAFKA__BOOTSTRAP_SERVERS``.
        type_name: Readable type.
        required: Whether the process refuses to start without it.
        default: Readable default ('' when required).
        description: Field description ('' when none).
        secret: Whether the value is a secret (never logged).
    """

    name: str
    type_name: str
    required: bool
    default: str
    description: str
    secret: bool


def load_settings_class(process: str) -> type[BaseSettings] | None:
    """Import a process's settings class.

    Args:
        process: Key of :data:`SETTINGS_CLASSES`.

    Returns:
        The class, or ``None`` when it does not exist (yet) in this checkout.
    """
    module_name, class_name = SETTINGS_CLASSES[process].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    return getattr(module, class_name, None)


def _unwrap_optional(annotation: object) -> object:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_section(annotation: object) -> bool:
    inner = _unwrap_optional(annotation)
    return isinstance(inner, type) and issubclass(inner, BaseModel)


def type_name(annotation: object) -> str:
    """Readable, stable name of a field's type.

    Args:
        annotation: The field's annotation.

    Returns:
        For example ``int``, ``str | None``, ``one of: ks, psi``, ``list[str]``.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of: " + ", ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type):
        return "path" if issubclass(annotation, Path) else annotation.__name__
    return str(annotation)


def _default_text(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(unset)"
    return str(value)


def _walk(
    model: type[BaseModel], prefix: str, delimiter: str, instance: BaseModel | None
) -> list[EnvVar]:
    found: list[EnvVar] = []
    for field_name, info in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        annotation = info.annotation
        has_default = info.default is not PydanticUndefined or info.default_factory is not None
        if _is_section(annotation):
            section = _unwrap_optional(annotation)
            default_section = None
            if info.default is not PydanticUndefined and isinstance(info.default, BaseModel):
                default_section = info.default
            # A required section may still have defaults inside; its own required fields are
            # what make the process refuse to start. An optional section (default None) makes
            # nothing required: its fields are needed only when the section is given at all.
            nested = _walk(section, f"{name}{delimiter}", delimiter, default_section)
            if info.default is None:
                nested = [replace(var, required=False,
                                  default="(unset)" if var.required else var.default)
                          for var in nested]
            found.extend(nested)
            continue
        value = getattr(instance, field_name) if instance is not None else info.default
        if info.default_factory is not None and instance is None:
            default = "(computed at start-up)"
        elif not has_default:
            default = ""
        else:
            default = _default_text(value)
        inner = _unwrap_optional(annotation)
        secret = isinstance(inner, type) and issubclass(inner, SecretStr)
        found.append(
            EnvVar(
                name=name,
                type_name="secret string" if secret else type_name(annotation),
                required=not has_default,
                default=default,
                description=(info.description or "").strip(),
                secret=secret,
            )
        )
    return found


def env_vars(settings_class: type[BaseSettings]) -> list[EnvVar]:
    """List the environment variables a settings class reads (nested sections flattened).

    Args:
        settings_class: A pydantic-settings class.

    Returns:
        The variables, in field order.
    """
    config = settings_class.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = str(config.get("env_nested_delimiter") or "__")
    return _walk(settings_class, prefix.upper(), delimiter, None)


def env_names(settings_class: type[BaseSettings]) -> set[str]:
    """Every variable name a settings class accepts, sections included.

    A whole section may also be given as JSON (``LINEWATCH_KAFKA='{...}'``), so section
    names are valid too.

    Args:
        settings_class: A pydantic-settings class.

    Returns:
        The set of names.
    """
    names = {var.name for var in env_vars(settings_class)}
    config = settings_class.model_config
    prefix = str(config.get("env_prefix") or "").upper()
    for field_name, info in settings_class.model_fields.items():
        if _is_section(info.annotation):
            names.add(f"{prefix}{field_name.upper()}")
    return names


def render_markdown() -> str:
    """Render the configuration reference of every process present in this checkout.

    Returns:
        Markdown text for ``docs/configuration.md``.
    """
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_docs.py from the settings classes; do not edit. -->",
        "",
        "Every process reads its settings from environment variables (or a `.env` file in its",
        "working directory). Prefix `LINEWATCH_`; nested sections use `__`, for example",
        "`LINEWATCH_KAFKA__BOOTSTRAP_SERVERS`. A whole section can also be given as JSON",
        '(`LINEWATCH_KAFKA=\'{"bootstrap_servers": "kafka:9092"}\'`). Required variables have',
        "no default: the process refuses to start without them and names the missing field.",
        "Secrets are never logged.",
        "",
    ]
    missing = []
    for process, target in SETTINGS_CLASSES.items():
        settings_class = load_settings_class(process)
        if settings_class is None:
            missing.append(f"`{process}` (`{target}`)")
            continue
        module = PROCESS_MODULES[process]
        lines += [
            f"## {process}",
            "",
            f"`python -m {module}` reads `{target.replace(':', '.')}`.",
            "",
            "| Variable | Type | Default | Description |",
            "|---|---|---|---|",
        ]
        for var in env_vars(settings_class):
            default = "**required**" if var.required else f"`{var.default}`"
            description = var.description.replace("|", "\\|")
            type_text = var.type_name.replace("|", "\\|")
            lines.append(f"| `{var.name}` | {type_text} | {default} | {description} |")
        lines.append("")
    if missing:
        lines += ["Not in this checkout yet: " + ", ".join(missing) + ".", ""]
    return "\n".join(lines)
