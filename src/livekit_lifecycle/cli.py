"""The ``livekit-lifecycle`` command (also ``python -m livekit_lifecycle``).

Each subcommand lives in its own (private) module exposing ``configure_parser(parser)``
and ``run(args) -> int``; :data:`COMMANDS` lists them. A command module
imports its optional dependencies inside ``run``, so one command's extras
never break the others.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("livekit_lifecycle._demo", "play the seed's scenarios on a real rtc.Room, no server"),
    "inspect": (
        "livekit_lifecycle.inspector._command",
        "see every session live: --web serves a statechart page",
    ),
    "render": (
        "livekit_lifecycle.render._command",
        "draw the statechart, or one session's path through it",
    ),
    "watch": (
        "livekit_lifecycle._watch",
        "show each participant's lifecycle state in a room, live",
    ),
    "watchdog": (
        "livekit_lifecycle._watchdog_command",
        "dispatch an agent again to the rooms of jobs that died (crash recovery)",
    ),
}
"""Subcommand name -> (module, one-line help)."""


TRACEBACK_ENV = "LIVEKIT_LIFECYCLE_TRACEBACK"
"""Set to 1 for the full traceback of an unexpected error (one line otherwise)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (not the usage, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="livekit-lifecycle",
        description="Participant lifecycle state machines for LiveKit agents.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        importlib.import_module(module_name).configure_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. Bad arguments and failures are one line on stderr.

    Every command reports what it expects to go wrong itself; anything else
    is still one line (with ``LIVEKIT_LIFECYCLE_TRACEBACK=1``, the traceback).
    """
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(args._module)
        result: int = module.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            traceback.print_exc()
        print(
            f"livekit-lifecycle {args.command}: unexpected error: {type(exc).__name__}: {exc}"
            f" (set {TRACEBACK_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
