"""The live demo: scripted users on real SDK connections to the embedded loopback server.

An agent-side ``rtc.Room`` with a :class:`~livekit_lifecycle.LifecycleManager`
joins a room on a :class:`~livekit_loopback.LoopbackServer`; scripted
users connect as real SDK clients (real signalling, real WebRTC) and refresh,
reconnect rapidly, open a duplicate tab, lose their leave, let the window
expire; then the agent shuts down gracefully. A live per-participant table is
shown on a terminal (one line per transition otherwise), then a summary.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, TextIO

from livekit import rtc

from ._demo_common import DemoManager, OnManager, Timeline
from .manager import LifecycleManager
from .session import Session, Transition
from .statechart import State

__all__ = ["LiveDemoUnavailable", "run_live_demo"]

ROOM = "demo-room"
_WAIT = 15.0


class LiveDemoUnavailable(RuntimeError):
    """The loopback server cannot run here (no ``testing`` extra, or no usable network)."""


async def run_live_demo(
    grace_period: float = 2.0,
    out: TextIO | None = None,
    live_table: bool = False,
    on_manager: OnManager | None = None,
) -> int:
    """Play every scenario over real connections; 0 when every check passed, 1 otherwise.

    Raises:
        LiveDemoUnavailable: before anything is shown, when the server cannot run here.
    """
    try:
        from livekit_loopback import LoopbackServer, LoopbackUnavailable
    except ImportError as exc:
        raise LiveDemoUnavailable(str(exc)) from None
    server = LoopbackServer(leave_timeout=1.0)
    try:
        await server.start()
    except LoopbackUnavailable as exc:
        raise LiveDemoUnavailable(str(exc)) from None
    timeline = Timeline(out)
    table = _LiveTable(timeline.out) if live_table else None
    with _quiet_sdk_logs():
        try:
            agent = await server.connect("agent", ROOM, kind="agent")
            timeline.title(
                f"livekit-lifecycle live demo: agent and users on real SDK connections to"
                f" {server.url} (grace window {grace_period}s)"
            )
            demo = DemoManager(grace_period, timeline)
            manager, cleanups, seen = demo.manager, demo.cleanups, demo.seen
            if on_manager is not None:
                await on_manager(manager)
            if table is None:
                manager.on("state_changed", timeline.transition)
            else:
                table.start(manager, seen, timeline)
            manager.attach(agent)
            script = _Script(server, manager, timeline, cleanups)
            try:
                await script.play()
            finally:
                if table is not None:
                    table.stop()
            timeline.final_states(seen)
        finally:
            await server.stop()
    return timeline.verdict()


class _Script:
    def __init__(
        self,
        server: Any,
        manager: LifecycleManager,
        timeline: Timeline,
        cleanups: dict[str, int],
    ) -> None:
        self.server = server
        self.manager = manager
        self.timeline = timeline
        self.cleanups = cleanups

    async def join(self, identity: str) -> rtc.Room:
        client: rtc.Room = await self.server.connect(identity, ROOM)
        return client

    async def until(self, key: str, state: State) -> Session:
        return await self.manager.wait_for(key, state, _WAIT)

    async def play(self) -> None:
        timeline, manager = self.timeline, self.manager
        timeline.heading("User refresh: the page leaves and a new page joins inside the window")
        alice = await self.join("alice")
        await self.until("alice", State.ACTIVE)
        manager.set_user_id("alice", "user-4e3efa3d")
        await alice.disconnect()
        await self.until("alice", State.GRACE)
        await self.join("alice")
        session = await self.until("alice", State.ACTIVE)
        timeline.check("cleanup ran once", self.cleanups.get("alice") == 1)
        timeline.check("same session, user_id kept", session.user_id == "user-4e3efa3d")
        timeline.check("reconnected once", session.reconnects == 1)

        timeline.heading("Rapid reconnects: the same user joins and leaves three times")
        for _ in range(3):
            bob = await self.join("bob")
            await bob.disconnect()
        await self.join("bob")
        await manager.idle()
        session = await self.until("bob", State.ACTIVE)
        timeline.check(
            "one cleanup per ended connection (3)",
            self.cleanups.get("bob") == 3 and session.reconnects == 3,
        )

        timeline.heading("Duplicate tab: a second connection with the same identity")
        await self.join("carol")
        await self.until("carol", State.ACTIVE)
        await self.join("carol")  # the server replaces the first one (DUPLICATE_IDENTITY)
        await manager.idle()
        session = await self.until("carol", State.ACTIVE)
        timeline.check(
            "first tab cleaned once, session moved to the new tab",
            self.cleanups.get("carol") == 1 and session.reconnects == 1,
        )

        timeline.heading("Lost leave: the browser vanished, the server notices later")
        await self.join("dave")
        await self.until("dave", State.ACTIVE)
        manager.set_user_id("dave", "user-d4")
        await self.server.drop_signal("dave", ROOM)
        session = await self.until("dave", State.GRACE)
        timeline.check("disconnect arrived as SIGNAL_CLOSE", session.disconnect_reason == 9)
        await self.join("dave")
        session = await self.until("dave", State.ACTIVE)
        timeline.check("dave back in the same session", session.user_id == "user-d4")

        timeline.heading("Window expired: a user who comes back too late starts afresh")
        erin = await self.join("erin")
        await self.until("erin", State.ACTIVE)
        manager.set_user_id("erin", "user-e5")
        await erin.disconnect()
        await self.until("erin", State.REMOVED)
        await self.join("erin")
        session = await self.until("erin", State.ACTIVE)
        timeline.check("fresh session, no user_id", session.user_id is None)

        timeline.heading("Graceful shutdown while users are connected")
        closed: list[str] = []
        manager.add_resource(lambda: closed.append("tts"), name="tts")
        before = dict(self.cleanups)
        await manager.aclose()
        cleaned = {k: v - before.get(k, 0) for k, v in self.cleanups.items()}
        timeline.check(
            "every connected user cleaned exactly once",
            {k for k, n in cleaned.items() if n} == {"alice", "bob", "carol", "dave", "erin"}
            and set(cleaned.values()) == {1},
        )
        timeline.check(
            "TTS closed once, no session left", closed == ["tts"] and not manager.sessions
        )


class _LiveTable:  # pragma: no cover - needs a terminal; the line timeline shares the data
    """A rich table of every session, redrawn on each change."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self._console = Console(file=out)
        self._live: Any = None
        self._since: dict[str, tuple[str, float]] = {}

    def start(self, manager: LifecycleManager, seen: list[Session], timeline: Timeline) -> None:
        from rich.live import Live

        self._seen = seen
        # Lines printed while the table is live go above it, through rich.
        timeline.write = lambda text: self._console.print(text, markup=False, highlight=False)
        manager.on("state_changed", self._changed)
        self._live = Live(self._render(), console=self._console, refresh_per_second=4)
        self._live.start()
        self._live.get_renderable = self._render

    def _changed(self, session: Session, transition: Transition) -> None:
        self._since[session.key] = (transition.trigger, time.monotonic())
        self._live.refresh()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title="participants (live)")
        for column in ("session", "state", "for", "last trigger", "sid", "conn.", "cleanups"):
            table.add_column(column)
        latest = {session.key: session for session in self._seen}
        now = time.monotonic()
        for key, session in latest.items():
            trigger, since = self._since.get(key, ("-", now))
            style = {"active": "green", "grace": "yellow", "removed": "dim"}.get(
                session.state.value, "white"
            )
            table.add_row(
                key,
                f"[{style}]{session.state.value}[/]",
                f"{now - since:4.1f}s",
                trigger,
                session.sid,
                str(session.connections),
                str(session.cleanups),
            )
        return table

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()


@contextlib.contextmanager
def _quiet_sdk_logs() -> Iterator[None]:
    """The SDK logs expected errors (e.g. a data channel closing after a lost leave)."""
    loggers = [logging.getLogger(name) for name in ("livekit", "livekit_loopback")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
