"""The start-up every process shares: arguments, settings, logging, signals, exit codes.

A process's ``main(argv)`` builds its parser with :func:`parser` (``--log-level`` is
always there, ``--help`` works without any environment) and hands its body to
:func:`run_process`, which reads the settings class (a bad or missing setting exits 2
naming the field), configures logging, turns SIGTERM/SIGINT into a stop event (finish the
work in hand, then exit) and turns the project's errors into exit 1 with one clear line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from pipeline.errors import LinewatchError
from pipeline.observability import HealthServer
from pipeline.settings import HttpSettings, LogLevel, ProcessSettings

SettingsT = TypeVar("SettingsT", bound=ProcessSettings)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Started(Generic[SettingsT]):
    """What a process's body gets.

    Attributes:
        program: Command name (for messages).
        args: Parsed command line.
        settings: The process's settings.
        stop: Set by SIGTERM/SIGINT.
    """

    program: str
    args: argparse.Namespace
    settings: SettingsT
    stop: threading.Event


def parser(program: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every process has."""
    built = argparse.ArgumentParser(prog=program, description=description)
    built.add_argument("--log-level", choices=get_args(LogLevel),
                       help="overrides LINEWATCH_LOG_LEVEL")
    return built


def run_process(program: str, arguments: argparse.ArgumentParser,
                settings_class: type[SettingsT], body: Callable[[Started[SettingsT]], int],
                argv: Sequence[str] | None = None, *,
                overrides: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
                adjust: Callable[[SettingsT, argparse.Namespace], SettingsT] | None = None,
                failures: tuple[type[BaseException], ...] = (LinewatchError,)) -> int:
    """Parse, read settings, set up logging and signals, run ``body``.

    Args:
        program: Command name used in messages.
        arguments: Parser from :func:`parser` (plus the process's own options).
        settings_class: The process's settings class.
        body: The process; returns its exit code.
        argv: Command line (default ``sys.argv[1:]``).
        overrides: Settings given on the command line (constructor arguments).
        adjust: Applies command-line changes to the built settings (validated like them).
        failures: Errors that end the process with exit 1 and one line on stderr.

    Returns:
        The exit code: ``body``'s, 1 after one of ``failures``, 2 for invalid settings.
    """
    args = arguments.parse_args(argv)
    try:
        settings = settings_class(**(overrides(args) if overrides is not None else {}))
        if adjust is not None:
            settings = adjust(settings, args)
    except ValidationError as error:
        print(f"{program}: invalid settings:\n{describe_invalid(error)}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level or settings.log_level, format=LOG_FORMAT)
    try:
        return body(Started(program, args, settings, stop_event_on_signals()))
    except failures as error:
        print(f"{program}: {error}", file=sys.stderr)
        return EXIT_FAILURE


def describe_invalid(error: ValidationError) -> str:
    """One line per invalid field, naming it, without the value given (it may be secret)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "settings"
        lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def stop_event_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (only the main thread can install handlers)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    return stop


def serve_health(stack: ExitStack, http: HttpSettings, registry: CollectorRegistry,
                 is_alive: Callable[[], bool], is_ready: Callable[[], bool]) -> None:
    """Serve ``/healthz`` ``/readyz`` ``/metrics`` until ``stack`` closes (when enabled)."""
    if http.enabled:
        stack.enter_context(HealthServer(registry, is_alive, is_ready, http.host, http.port))


def default_member_id() -> str:
    """``<host>-<pid>``: a process's default name in a consumer group."""
    return f"{socket.gethostname()}-{os.getpid()}"
