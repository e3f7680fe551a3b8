"""Start-up plumbing shared by the command-line processes (producer, worker, tools)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Sets up root logging at ``level`` (a name such as ``INFO``)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def load_settings(cls: type[SettingsT], program: str, **overrides: Any) -> SettingsT | None:
    """Builds a process's settings, or prints why they are invalid (naming the field).

    Args:
        cls: The process's pydantic-settings class.
        program: Command name used in the message.
        **overrides: Values given on the command line.

    Returns:
        The settings, or None after printing the validation error to stderr.
    """
    try:
        return cls(**overrides)
    except ValidationError as error:
        print(f"{program}: invalid settings:\n{error}", file=sys.stderr)
        return None


def stop_event_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (finish the work in hand, then exit)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
