"""``livekit-lifecycle inspect``: the live statechart page, and the fleet view of a store.

``--web --room NAME`` joins the room as a hidden observer (the connection
``livekit-lifecycle watch`` makes, with the same ``--url``/``--room``/credential
options) and serves the page until Ctrl-C or until the room goes away.
``--store URL`` prints every worker's sessions from a session store (a table,
or ``--json``); with ``--web`` it serves them on the page instead, polled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livekit_lifecycle._watch import WatchSettings

    from ._source import Source

__all__ = ["configure_parser", "run"]

_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web", action="store_true", help="serve the live statechart page (prints its URL)"
    )
    _add_web_options(parser)
    from livekit_lifecycle._watch import _add_connection_options

    room = parser.add_argument_group("live room (the connection `watch` makes)")
    _add_connection_options(room, room_help="room to inspect", room_required=False)
    parser.set_defaults(duration=None)
    # issue 12: `inspect --store URL` prints every worker's sessions from a session store.
    from livekit_lifecycle.stores._command import add_store_options

    add_store_options(parser)


def _add_web_options(parser: argparse.ArgumentParser) -> None:
    web = parser.add_argument_group("web page")
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; any other needs a token)",
    )
    web.add_argument(
        "--port", type=_port, default=0, help="port, 0 to 65535 (default 0: any free port)"
    )
    web.add_argument(
        "--token",
        default=None,
        help="token every request must carry (default: generated when not on loopback)",
    )
    web.add_argument(
        "--show-data",
        action="store_true",
        help="also show each session's application data (hidden by default)",
    )


def _port(text: str) -> int:
    """A TCP port number for argparse: 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def run(args: argparse.Namespace) -> int:
    if args.store is not None:  # the fleet view, from a session store
        if args.web:
            try:
                return asyncio.run(_serve_store(args))
            except KeyboardInterrupt:  # pragma: no cover - the signal handlers normally catch it
                return _EXIT_OK
        from livekit_lifecycle.stores._command import run_store

        return run_store(args)
    if not args.web:
        print(
            "livekit-lifecycle inspect: say what to show: --web serves the live page,"
            " --store URL prints every worker's sessions",
            file=sys.stderr,
        )
        return _EXIT_USAGE
    from livekit_lifecycle._watch import WatchError, _settings_from

    if not args.room:
        print("livekit-lifecycle inspect: --web needs --room NAME", file=sys.stderr)
        return _EXIT_USAGE
    try:
        settings = _settings_from(args, os.environ)
    except WatchError as exc:
        print(f"livekit-lifecycle inspect: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        return asyncio.run(_serve_room(settings, args))
    except KeyboardInterrupt:  # pragma: no cover - the signal handlers normally catch it
        return _EXIT_OK


async def _serve_room(settings: WatchSettings, args: argparse.Namespace) -> int:
    from livekit_lifecycle._watch import WatchError

    from ._source import RoomSource

    source = RoomSource(settings, show_data=args.show_data)
    try:
        await source.start()
    except WatchError as exc:
        print(f"livekit-lifecycle inspect: {exc}", file=sys.stderr)
        return exc.exit_code
    assert source.ended is not None
    return await _serve(source, args, source.ended)


async def _serve_store(args: argparse.Namespace) -> int:
    from livekit_lifecycle.stores import open_store

    from ._source import StoreSource

    try:
        store = open_store(args.store, namespace=args.namespace)
        await store.ping()
    except Exception as exc:
        print(f"livekit-lifecycle inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    try:
        return await _serve(StoreSource(store, show_data=args.show_data), args, None)
    finally:
        await store.aclose()


async def _serve(
    source: Source, args: argparse.Namespace, ended: asyncio.Future[Any] | None
) -> int:
    """Serve ``source``'s page until Ctrl-C/SIGTERM or until ``ended`` is done."""
    from livekit_lifecycle._watch import _stop_on_signals

    from ._server import Inspector

    try:
        inspector = await Inspector.start(source, host=args.host, port=args.port, token=args.token)
    except OSError as exc:
        await source.aclose()
        print(
            f"livekit-lifecycle inspect: cannot serve on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return _EXIT_FAILED
    try:
        print(f"inspector: {inspector.url}  (Ctrl-C to stop)", flush=True)
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            stopped = asyncio.ensure_future(stop.wait())
            waits: set[asyncio.Future[Any]] = {stopped}
            if ended is not None:
                waits.add(ended)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
    finally:
        await inspector.aclose()  # closes the source too
    return _EXIT_OK
