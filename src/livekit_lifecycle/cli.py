"""The ``livekit-lifecycle`` command (also ``python -m livekit_lifecycle``).

Each subcommand lives in its own (private) module exposing ``configure_parser(parser)``
and ``run(args) -> int``; :data:`COMMANDS` lists them. A command module
imports its optional dependencies inside ``run``, so one command's extras
never break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
}
"""Subcommand name -> (module, one-line help)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    result: int = module.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
