"""``linewatch-dead-letters list|replay``: settings from ``LINEWATCH_KAFKA__*``."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.kafka.dead_letters import read_dead_letters
from workers import startup
from workers.dead_letters.settings import DeadLetterSettings
from workers.dead_letters.tool import describe, replay, select

PROGRAM = "linewatch-dead-letters"


def _run(started: startup.Started[DeadLetterSettings]) -> int:
    settings, args = started.settings, started.args
    letters = list(select(read_dead_letters(settings.kafka, args.from_offset,
                                            settings.read_timeout_ms),
                          args.reason, args.line, args.camera))
    if args.command == "list":
        for letter in letters:
            print(describe(letter))
        print(f"{len(letters)} dead letter(s)")
        return startup.EXIT_OK
    count = replay(settings.kafka, letters)
    last = max((d.offset for d in letters), default=None)
    print(f"replayed {count} dead letter(s) to {settings.kafka.frames_topic}"
          + (f"; next time use --from-offset {last + 1}" if last is not None else ""))
    return startup.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``list`` or ``replay`` dead letters."""
    arguments = startup.parser(PROGRAM, "List or replay dead-lettered frames.")
    arguments.add_argument("command", choices=["list", "replay"])
    arguments.add_argument("--reason", help="only this reason, e.g. unknown_product_line")
    arguments.add_argument("--line", help="only frames of this product line")
    arguments.add_argument("--camera", help="only frames of this camera")
    arguments.add_argument("--from-offset", type=int, default=0,
                           help="start at this dead-letter offset (skip what was replayed)")
    return startup.run_process(PROGRAM, arguments, DeadLetterSettings, _run, argv)
