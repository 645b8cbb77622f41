"""``livekit-lifecycle inspect --store URL``: every room's sessions across every worker.

The ``inspect`` command (:mod:`livekit_lifecycle.inspector._command`) adds
these options and hands ``--store`` here. A thin layer over
:func:`livekit_lifecycle.stores.fleet_snapshot`, which returns the same view
as plain data for other front ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

__all__ = ["add_store_options", "format_table", "run_store"]

_EXIT_UNREACHABLE = 2
_COLUMNS = (
    ("ROOM", "room"),
    ("KEY", "key"),
    ("STATE", "state"),
    ("USER_ID", "user_id"),
    ("SID", "sid"),
    ("RECONN", "reconnects"),
    ("CLEANUPS", "cleanups"),
    ("GRACE_LEFT", "grace_remaining"),
    ("OWNER", "owner"),
    ("AGE", "updated_at"),
)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--store``, ``--namespace`` and ``--json`` (``--room`` filters, when the parser has it)."""
    fleet = parser.add_argument_group("session store (every worker's sessions)")
    fleet.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="print the sessions in this store: redis://host:port/db (rediss://, unix://)",
    )
    fleet.add_argument(
        "--namespace", default=None, help="the store's key namespace (default: livekit-lifecycle)"
    )
    fleet.add_argument("--json", action="store_true", help="with --store: one JSON document")


def run_store(args: argparse.Namespace) -> int:
    """Print the fleet snapshot of ``args.store`` (only ``args.room`` if set)."""
    try:
        snapshot = asyncio.run(_snapshot(args.store, args.namespace, getattr(args, "room", None)))
    except Exception as exc:
        print(f"livekit-lifecycle inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_UNREACHABLE
    if args.json:
        json.dump(snapshot, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        format_table(snapshot, sys.stdout)
    return 0


async def _snapshot(url: str, namespace: str | None, room: str | None) -> dict[str, Any]:
    from . import fleet_snapshot, open_store

    store = open_store(url, namespace=namespace)
    try:
        return await fleet_snapshot(store, room=room or None)
    finally:
        await store.aclose()


def format_table(snapshot: dict[str, Any], out: TextIO) -> None:
    """Write a fleet snapshot as an aligned text table, one session per line."""
    now = snapshot.get("taken_at", time.time())
    rows = [
        [_cell(name, record.get(name), now) for _, name in _COLUMNS]
        for sessions in snapshot["rooms"].values()
        for record in sessions.values()
    ]
    if not rows:
        out.write("no sessions in the store\n")
        return
    header = [title for title, _ in _COLUMNS]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")
    rooms = len(snapshot["rooms"])
    out.write(f"{len(rows)} session(s) in {rooms} room(s)\n")


def _cell(name: str, value: Any, now: float) -> str:
    if value is None:
        return "-"
    if name == "updated_at":
        return f"{max(now - value, 0):.1f}s"
    if name == "grace_remaining":
        return f"{value:.1f}s"
    return str(value)
