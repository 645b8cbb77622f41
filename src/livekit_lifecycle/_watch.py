"""``livekit-lifecycle watch``: every participant's lifecycle state in a room, live.

Joins the room as a hidden observer (it publishes nothing, subscribes to
nothing, and other participants do not see it), attaches its own
:class:`~livekit_lifecycle.LifecycleManager` and shows each session's state as
it changes: a live table on a terminal, one line per change otherwise, or
JSON lines with ``--format json``. Ends on Ctrl-C, after ``--duration``
seconds, or when the room goes away, with a summary.

Credentials come from ``--api-key``/``--api-secret`` or ``LIVEKIT_API_KEY`` /
``LIVEKIT_API_SECRET``, the URL from ``--url`` or ``LIVEKIT_URL``. Needs
``livekit-api`` (the ``watch`` extra, or livekit-agents, which depends on it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit, urlunsplit

from livekit import rtc

from .config import DEFAULT_KINDS, LifecycleConfig
from .manager import LifecycleManager
from .session import Session, Transition, reason_name
from .statechart import State

__all__ = ["WatchError", "WatchSettings", "Watcher", "configure_parser", "run"]

_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2


class WatchError(Exception):
    """A problem the user can fix (bad URL, bad credentials, unreachable server)."""

    def __init__(self, message: str, exit_code: int = _EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """What to watch and how."""

    url: str
    room: str
    api_key: str
    api_secret: str
    identity: str = field(default_factory=lambda: f"lifecycle-watch-{secrets.token_hex(3)}")
    grace_period: float = 30.0
    include_agents: bool = False
    connect_timeout: float = 10.0
    duration: float | None = None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    _add_connection_options(parser, room_help="room to watch")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C or the room closes)",
    )
    parser.add_argument(
        "--format",
        choices=("auto", "table", "lines", "json"),
        default="auto",
        help="live table (needs rich and a terminal), one line per change, or JSON lines"
        " (default: auto)",
    )


def _add_connection_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    room_help: str,
    room_required: bool = True,
) -> None:
    """The options of the observer's connection (``inspect --web`` joins rooms the same way)."""
    parser.add_argument(
        "--url", default=None, help="server URL, ws(s):// or http(s):// (default: $LIVEKIT_URL)"
    )
    parser.add_argument("--room", required=room_required, metavar="NAME", help=room_help)
    parser.add_argument("--api-key", default=None, help="API key (default: $LIVEKIT_API_KEY)")
    parser.add_argument(
        "--api-secret", default=None, help="API secret (default: $LIVEKIT_API_SECRET)"
    )
    parser.add_argument(
        "--identity", default=None, help="observer identity (default: lifecycle-watch-<random>)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="grace window of the observer's manager (default: 30)",
    )
    parser.add_argument(
        "--include-agents", action="store_true", help="also track agent participants"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="connection timeout (default: 10)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from(args, os.environ)
        renderer = _renderer(args.format, sys.stdout)
    except WatchError as exc:
        print(f"livekit-lifecycle watch: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        return asyncio.run(_main(settings, renderer))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return _EXIT_OK


async def _main(settings: WatchSettings, renderer: Renderer) -> int:
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        try:
            return await Watcher(settings, renderer).run(stop)
        except WatchError as exc:
            print(f"livekit-lifecycle watch: {exc}", file=sys.stderr)
            return exc.exit_code


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM for the duration of the block (where the loop allows)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _settings_from(args: argparse.Namespace, env: Any) -> WatchSettings:
    url = args.url or env.get("LIVEKIT_URL", "")
    key = args.api_key or env.get("LIVEKIT_API_KEY", "")
    secret = args.api_secret or env.get("LIVEKIT_API_SECRET", "")
    if url:
        check_url(url)
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
        raise WatchError("missing " + ", ".join(missing), _EXIT_USAGE)
    if not args.room:
        raise WatchError("--room must not be empty", _EXIT_USAGE)
    if not math.isfinite(args.grace) or args.grace < 0:
        raise WatchError("--grace must be a number of seconds >= 0", _EXIT_USAGE)
    for name in ("timeout", "duration"):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise WatchError(f"--{name} must be a number of seconds > 0", _EXIT_USAGE)
    return WatchSettings(
        url=url,
        room=args.room,
        api_key=key,
        api_secret=secret,
        **({"identity": args.identity} if args.identity else {}),
        grace_period=args.grace,
        include_agents=args.include_agents,
        connect_timeout=args.timeout,
        duration=args.duration,
    )


def check_url(url: str) -> str:
    """``url`` if it names a LiveKit server (``ws``, ``wss``, ``http`` or ``https`` with a host).

    Raises:
        WatchError: (usage) for anything else.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise WatchError(f"bad URL {url!r}: {exc}", _EXIT_USAGE) from None
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise WatchError(
            f"bad URL {url!r}: expected ws://host:port, wss://host, http(s)://host",
            _EXIT_USAGE,
        )
    return url


def _http_url(url: str, path: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


# ---------------------------------------------------------------------- rendering


class Renderer(Protocol):
    """How the watcher shows what happens."""

    def start(self, watcher: Watcher) -> None: ...

    def note(self, text: str) -> None: ...

    def changed(self, session: Session, transition: Transition | None) -> None: ...

    def stop(self, watcher: Watcher) -> None: ...


def _renderer(kind: str, out: TextIO) -> Renderer:
    if kind == "json":
        return JsonRenderer(out)
    if kind == "lines":
        return LineRenderer(out)
    table_possible = out.isatty()
    if table_possible:
        try:
            import rich  # noqa: F401
        except ImportError:
            table_possible = False
    if kind == "table":
        if not table_possible:
            raise WatchError(
                "--format table needs rich (pip install rich) and a terminal", _EXIT_USAGE
            )
        return TableRenderer(out)
    return TableRenderer(out) if table_possible else LineRenderer(out)


@dataclass
class _Row:
    key: str
    identity: str
    sid: str
    state: str
    since: float
    trigger: str
    reconnects: int
    cleanups: int
    tracks: int
    user_id: str | None

    @classmethod
    def of(cls, session: Session, transition: Transition | None) -> _Row:
        return cls(
            key=session.key,
            identity=session.identity,
            sid=session.sid,
            state=session.state.value,
            since=transition.at if transition is not None else time.time(),
            trigger=transition.trigger if transition is not None else "",
            reconnects=session.reconnects,
            cleanups=session.cleanups,
            tracks=len(session.tracks),
            user_id=session.user_id,
        )


def _summary_lines(watcher: Watcher) -> list[str]:
    rows = watcher.rows
    lines = [f"summary: {len(rows)} session(s), {watcher.transitions} transition(s)"]
    for row in rows.values():
        lines.append(
            f"  {row.key}: {row.state}, connections={row.reconnects + 1},"
            f" cleanups={row.cleanups}, last sid={row.sid}"
        )
    return lines


class LineRenderer:
    """One line per state change: easy to read in CI logs and to grep."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _print(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp}  {text}", file=self._out, flush=True)

    def start(self, watcher: Watcher) -> None:
        self._print(f"watching room {watcher.settings.room!r} at {watcher.settings.url}")

    def note(self, text: str) -> None:
        self._print(text)

    def changed(self, session: Session, transition: Transition | None) -> None:
        if transition is None:
            self._print(f"{session.key}  new session ({session.state.value}, sid {session.sid})")
        else:
            self._print(
                f"{session.key}  {transition.source.value} -> {transition.dest.value}"
                f"  ({transition.trigger}, sid {transition.sid})"
            )

    def stop(self, watcher: Watcher) -> None:
        for line in _summary_lines(watcher):
            print(line, file=self._out, flush=True)


class JsonRenderer:
    """JSON lines: ``connected``, ``created``, ``transition``, ``note`` and a final ``summary``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": time.time(), **fields}
        print(json.dumps(record, sort_keys=True), file=self._out, flush=True)

    def start(self, watcher: Watcher) -> None:
        self._emit("connected", room=watcher.settings.room, url=watcher.settings.url)

    def note(self, text: str) -> None:
        self._emit("note", text=text)

    def changed(self, session: Session, transition: Transition | None) -> None:
        if transition is None:
            self._emit(
                "created",
                key=session.key,
                identity=session.identity,
                sid=session.sid,
                state=session.state.value,
            )
        else:
            self._emit(
                "transition",
                key=session.key,
                identity=session.identity,
                sid=transition.sid,
                source=transition.source.value,
                dest=transition.dest.value,
                trigger=transition.trigger,
            )

    def stop(self, watcher: Watcher) -> None:
        self._emit(
            "summary",
            transitions=watcher.transitions,
            sessions={key: vars(row) for key, row in watcher.rows.items()},
        )


class TableRenderer:  # pragma: no cover - needs a terminal; LineRenderer shares the data
    """A live rich table, redrawn on every change and every second."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self._console = Console(file=out)
        self._live: Any = None
        self._watcher: Watcher | None = None
        self._notes: list[str] = []

    def _table(self) -> Any:
        from rich.table import Table

        watcher = self._watcher
        title = (
            "" if watcher is None else f"room {watcher.settings.room!r} — {watcher.settings.url}"
        )
        table = Table(title=title, caption="\n".join(self._notes[-3:]) or None)
        for column in ("session", "state", "for", "last trigger", "sid", "conn.", "cleanups"):
            table.add_column(column)
        now = time.time()
        rows = {} if watcher is None else watcher.rows
        for row in rows.values():
            style = {"active": "green", "grace": "yellow", "removed": "dim"}.get(row.state, "")
            table.add_row(
                row.key,
                f"[{style}]{row.state}[/]" if style else row.state,
                f"{now - row.since:5.1f}s",
                row.trigger,
                row.sid,
                str(row.reconnects + 1),
                str(row.cleanups),
            )
        return table

    def start(self, watcher: Watcher) -> None:
        from rich.live import Live

        self._watcher = watcher
        self._live = Live(self._table(), console=self._console, refresh_per_second=2)
        self._live.start()
        self._live.get_renderable = self._table

    def note(self, text: str) -> None:
        self._notes.append(f"{time.strftime('%H:%M:%S')} {text}")
        if self._live is not None:
            self._live.refresh()

    def changed(self, session: Session, transition: Transition | None) -> None:
        if self._live is not None:
            self._live.refresh()

    def stop(self, watcher: Watcher) -> None:
        if self._live is not None:
            self._live.stop()
        for line in _summary_lines(watcher):
            self._console.print(line, highlight=False, markup=False)


# ---------------------------------------------------------------------- watching


class Watcher:
    """Joins a room as a hidden observer and reports its lifecycle manager's changes.

    ``ready`` is set once connected; ``manager`` is the observer's manager
    (``None`` before that). :meth:`run` returns an exit code.
    """

    def __init__(self, settings: WatchSettings, renderer: Renderer) -> None:
        self.settings = settings
        self.renderer = renderer
        self.ready = asyncio.Event()
        self.manager: LifecycleManager | None = None
        self.rows: dict[str, _Row] = {}
        self.transitions = 0
        self.room: rtc.Room | None = None
        self._leaving = False

    def token(self) -> str:
        try:
            from livekit import api
        except ImportError:
            raise WatchError(
                "watch needs livekit-api to sign its token:"
                " pip install 'livekit-lifecycle[watch]' (or livekit-api)"
            ) from None
        grants = api.VideoGrants(
            room_join=True,
            room=self.settings.room,
            hidden=True,
            can_publish=False,
            can_publish_data=False,
            can_subscribe=False,
        )
        return (
            api.AccessToken(self.settings.api_key, self.settings.api_secret)
            .with_identity(self.settings.identity)
            .with_name("livekit-lifecycle watch")
            .with_grants(grants)
            .to_jwt()
        )

    async def preflight(self, token: str) -> None:
        """Ask the server's ``/rtc/validate`` first: clear errors before the SDK's retries.

        Raises:
            WatchError: server unreachable, credentials rejected, or not a LiveKit server.
        """
        try:
            import aiohttp
        except ImportError:
            return  # the SDK's own error messages will have to do
        url = _http_url(self.settings.url, "/rtc/validate")
        timeout = aiohttp.ClientTimeout(total=self.settings.connect_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
            ):
                status, text = response.status, (await response.text())[:300]
        except asyncio.TimeoutError:
            raise WatchError(
                f"cannot reach {self.settings.url}: no answer within"
                f" {self.settings.connect_timeout}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise WatchError(f"cannot reach {self.settings.url}: {exc}") from None
        if status in (401, 403):
            raise WatchError(
                f"the server rejected the credentials ({status}: {text.strip()}):"
                " check the API key and secret"
            )
        if status == 404:
            raise WatchError(f"{self.settings.url} does not look like a LiveKit server (404)")
        if status >= 400:
            raise WatchError(f"{self.settings.url} answered {status}: {text.strip()}")

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Connect, report until ``stop`` is set / the duration ends / the room closes."""
        stop = stop or asyncio.Event()
        token = self.token()
        await self.preflight(token)
        config = LifecycleConfig(
            grace_period=self.settings.grace_period,
            kinds=DEFAULT_KINDS | {rtc.ParticipantKind.PARTICIPANT_KIND_AGENT}
            if self.settings.include_agents
            else DEFAULT_KINDS,
        )
        room = rtc.Room()
        self.room = room
        gone = asyncio.Event()
        room.on("disconnected", lambda reason=None: self._room_gone(reason, gone))
        room.on("reconnecting", lambda: self.renderer.note("observer connection: reconnecting"))
        room.on("reconnected", lambda: self.renderer.note("observer connection: reconnected"))
        await self._connect(room, token)
        manager = LifecycleManager(config)
        manager.on("created", self._created)
        manager.on("state_changed", self._changed)
        self.manager = manager
        self.renderer.start(self)
        # Attached right after connecting, with no await in between: the
        # participants already there are adopted, and no event is missed.
        manager.attach(room)
        self.ready.set()
        try:
            await _first(stop.wait(), gone.wait(), timeout=self.settings.duration)
        finally:
            self._leaving = True
            await manager.aclose()
            await room.disconnect()
            self.renderer.stop(self)
        return _EXIT_OK

    async def _connect(self, room: rtc.Room, token: str) -> None:
        options = rtc.RoomOptions(
            auto_subscribe=False, connect_timeout=self.settings.connect_timeout
        )
        try:
            await asyncio.wait_for(
                room.connect(self.settings.url, token, options),
                # The SDK retries a failed join; give it room for that, not forever.
                self.settings.connect_timeout * 3,
            )
        except asyncio.TimeoutError:
            raise WatchError(
                f"could not join room {self.settings.room!r} at {self.settings.url}"
                f" within {self.settings.connect_timeout * 3}s"
            ) from None
        except rtc.ConnectError as exc:
            raise WatchError(f"could not join room {self.settings.room!r}: {exc}") from None

    def _room_gone(self, reason: Any, gone: asyncio.Event) -> None:
        if not self._leaving:
            self.renderer.note(f"the observer was disconnected ({reason_name(reason)})")
        gone.set()

    def _created(self, session: Session) -> None:
        if session.key in self.rows and self.rows[session.key].sid == session.sid:
            return
        self.rows[session.key] = _Row.of(session, None)
        self.renderer.changed(session, None)

    def _changed(self, session: Session, transition: Transition) -> None:
        self.transitions += 1
        row = _Row.of(session, transition)
        if transition.dest is State.REMOVED:
            row.state = State.REMOVED.value
        self.rows[session.key] = row
        self.renderer.changed(session, transition)


async def _first(*waits: Any, timeout: float | None) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
