"""``livekit-lifecycle watchdog``: dispatch dead jobs' rooms again (:mod:`.watchdog`).

Credentials and URL as the LiveKit CLIs take them: ``--url`` / ``LIVEKIT_URL``,
``--api-key`` / ``LIVEKIT_API_KEY``, ``--api-secret`` / ``LIVEKIT_API_SECRET``.
Runs until SIGINT or SIGTERM. Needs ``livekit-api`` and ``redis`` (the
``watchdog`` extra).

Standard output: one line when it starts, one per dispatch, one when it stops.
A dispatch's line is stable, for scripts and log search (logfmt: a value is
written as it is when it is made of ``A-Z a-z 0-9 . _ : @ / + -`` only, else as
a JSON string)::

    livekit-lifecycle watchdog: dispatched room=r1 dead_lease=h:42:1a2b sessions=2 dispatch_id=AD_x8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .watchdog import DeadRoom

__all__ = ["configure_parser", "dispatch_line", "run"]

_BARE = re.compile(r"[A-Za-z0-9._:@/+-]+")

_EXIT_USAGE = 2


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help="LiveKit server URL, http(s):// or ws(s):// ($LIVEKIT_URL)"
    )
    parser.add_argument("--api-key", default=None, help="API key ($LIVEKIT_API_KEY)")
    parser.add_argument("--api-secret", default=None, help="API secret ($LIVEKIT_API_SECRET)")
    parser.add_argument(
        "--store", required=True, metavar="URL", help="the agents' store: redis://host:port/db"
    )
    parser.add_argument(
        "--namespace", default=None, help="the store's key namespace (default: livekit-lifecycle)"
    )
    parser.add_argument(
        "--agent-name",
        default="",
        help="the workers' agent_name to dispatch (default: '', automatic dispatch)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (default: 1)"
    )


def run(args: argparse.Namespace) -> int:
    env = os.environ
    url = args.url or env.get("LIVEKIT_URL", "")
    key = args.api_key or env.get("LIVEKIT_API_KEY", "")
    secret = args.api_secret or env.get("LIVEKIT_API_SECRET", "")
    missing = [
        what
        for what, value in (
            ("a server URL (--url or LIVEKIT_URL)", url),
            ("an API key (--api-key or LIVEKIT_API_KEY)", key),
            ("an API secret (--api-secret or LIVEKIT_API_SECRET)", secret),
        )
        if not value
    ]
    if missing:
        return _usage("missing " + ", ".join(missing))
    if not math.isfinite(args.interval) or not 0 < args.interval <= 3600:
        return _usage("--interval must be a number of seconds within (0, 3600]")
    try:
        from .stores import open_store

        store = open_store(args.store, namespace=args.namespace)
    except (ValueError, ImportError) as exc:
        return _usage(f"--store: {exc}")
    if not callable(getattr(store, "dead_rooms", None)):
        return _usage("--store: the watchdog needs a durable store with leases (redis://)")
    try:
        asyncio.run(_watch(store, url, key, secret, args.agent_name, args.interval))
    except ImportError as exc:
        return _usage(f"{exc} (pip install 'livekit-lifecycle[watchdog]')")
    return 0


async def _watch(
    store: object, url: str, key: str, secret: str, agent_name: str, interval: float
) -> None:
    from .watchdog import Watchdog

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    watchdog = Watchdog(
        store,  # type: ignore[arg-type]
        url=url,
        api_key=key,
        api_secret=secret,
        agent_name=agent_name,
        interval=interval,
        on_dispatch=lambda dead_room: print(dispatch_line(dead_room), flush=True),
    )
    print(f"livekit-lifecycle watchdog {watchdog.name}: watching {url}", flush=True)
    try:
        async with watchdog:
            await stop.wait()
    finally:
        await store.aclose()  # type: ignore[attr-defined]
    print(f"livekit-lifecycle watchdog: stopped ({watchdog.stats})", flush=True)


def dispatch_line(dead_room: DeadRoom) -> str:
    """The command's line for one dispatch (see the module doc)."""
    fields = (
        ("room", dead_room.room),
        ("dead_lease", dead_room.dead_owner),
        ("sessions", str(dead_room.sessions)),
        ("dispatch_id", dead_room.dispatch_id),
    )
    text = " ".join(f"{name}={_value(value)}" for name, value in fields)
    return f"livekit-lifecycle watchdog: dispatched {text}"


def _value(value: str) -> str:
    return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)


def _usage(message: str) -> int:
    print(f"livekit-lifecycle watchdog: {message}", file=sys.stderr)
    return _EXIT_USAGE
