"""Trainer job: refit one product line's model, gate it, and roll it out to the workers.

Commands (``python -m workers.trainer``; settings from ``LINEWATCH_*``, see
docs/configuration.md)::

    python -m workers.trainer --line tiles [--good DIR]... [--gate-good DIR]...
                              [--defects DIR]... [--from-topic TOPIC] [--dry-run]
    python -m workers.trainer rollback --line tiles [--to VERSION]
    python -m workers.trainer list --line tiles

Training run, step by step:

1. collect good frames (folders, or a topic of known-good frame records), drop
   near-duplicates, split off the gate frames by content hash, sample the training frames;
2. fit a candidate with the model package (which calibrates on its own held-out share);
3. score the candidate and the line's current model on the same gate frames (neither was
   trained on them) and on the line's labelled defective frames, if any;
4. promote only when the gate passes: write the artifact, verify it loads, write the report,
   move ``current`` atomically, notify the workers (Redis pub/sub), keep the newest K
   versions. Otherwise the current model stays and the reasons are printed.

Exit codes: 0 promoted (or gate passed on ``--dry-run``), 3 refused by the gate,
1 failure (data, store, model), 2 invalid settings or arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from model.errors import ModelError
from pipeline.errors import LinewatchError
from workers import startup
from workers.trainer.promotion import roll_back
from workers.trainer.report import summary_table, versions_table
from workers.trainer.run import RunOptions, run_training
from workers.trainer.settings import FitSettings, TrainerSettings

PROGRAM = "linewatch-trainer"

EXIT_PROMOTED = startup.EXIT_OK
EXIT_FAILED = startup.EXIT_FAILURE
EXIT_USAGE = startup.EXIT_USAGE
EXIT_REFUSED = 3


COMMANDS = ("train", "rollback", "list")


def _parser(command: str) -> argparse.ArgumentParser:
    parser = startup.parser(
        f"{PROGRAM}{'' if command == 'train' else ' ' + command}",
        {"train": "Refit a line's model, gate it, roll it out.",
         "rollback": "Point a line back at an earlier version and notify workers.",
         "list": "List a line's stored versions."}[command])
    parser.add_argument("--line", required=True, help="product line")
    if command == "rollback":
        parser.add_argument("--to", help="version (default: the one before the current)")
    if command == "train":
        parser.add_argument("--good", type=Path, action="append", default=[],
                            help="folder of good frames (repeatable)")
        parser.add_argument("--gate-good", type=Path, action="append", default=[],
                            help="folder of good frames used only by the gate (repeatable)")
        parser.add_argument("--defects", type=Path, action="append", default=[],
                            help="folder of labelled defective frames, recursive (repeatable)")
        parser.add_argument("--from-topic", help="capture good frames from this topic")
        parser.add_argument("--image-size", type=int, help="overrides LINEWATCH_FIT__IMAGE_SIZE")
        parser.add_argument("--epochs", type=int, help="overrides LINEWATCH_FIT__EPOCHS")
        parser.add_argument("--device", help="overrides LINEWATCH_FIT__DEVICE")
        parser.add_argument("--max-images", type=int, help="overrides LINEWATCH_MAX_IMAGES")
        parser.add_argument("--dry-run", action="store_true", help="fit and gate only")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("--report", type=Path, help="also write the summary as JSON")
    return parser


def _with_overrides(settings: TrainerSettings, args: argparse.Namespace) -> TrainerSettings:
    fit = {k: v for k, v in (("image_size", args.image_size), ("epochs", args.epochs),
                             ("device", args.device)) if v is not None}
    update: dict[str, Any] = {
        "fit": FitSettings.model_validate(settings.fit.model_dump() | fit)}
    if args.max_images is not None:
        update["max_images"] = max(4, args.max_images)
    return settings.model_copy(update=update)


def _train(settings: TrainerSettings, args: argparse.Namespace, out: TextIO) -> int:
    options = RunOptions(line=args.line, good=tuple(args.good), gate_good=tuple(args.gate_good),
                         defects=tuple(args.defects), capture_topic=args.from_topic,
                         dry_run=args.dry_run, progress=not args.no_progress,
                         report=args.report)
    outcome = run_training(settings, options)
    print(summary_table(outcome, settings.gate, options.dry_run), file=out)
    if options.report is not None:
        options.report.write_text(json.dumps(outcome.to_dict(), indent=1, sort_keys=True))
    return EXIT_REFUSED if outcome.reasons else EXIT_PROMOTED


def _rollback(settings: TrainerSettings, args: argparse.Namespace, out: TextIO) -> int:
    previous, version, notified = roll_back(settings, args.line, args.to)
    print(f"line {args.line}: {previous or '(none)'} -> {version} "
          f"(workers notified: {'unknown' if notified < 0 else notified})", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m workers.trainer``: train (default), ``rollback`` or ``list`` one line."""
    out = out or sys.stdout
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = arguments.pop(0) if arguments and arguments[0] in COMMANDS else "train"

    def body(started: startup.Started[TrainerSettings]) -> int:
        settings, args = started.settings, started.args
        if command == "train":
            return _train(settings, args, out)
        if command == "rollback":
            return _rollback(settings, args, out)
        print(versions_table(settings.model_store, args.line), file=out)
        return startup.EXIT_OK

    return startup.run_process(
        PROGRAM, _parser(command), TrainerSettings, body, arguments,
        adjust=_with_overrides if command == "train" else None,
        failures=(LinewatchError, ModelError, FileNotFoundError, ValueError))
