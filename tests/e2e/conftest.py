"""End-to-end fixtures: a manager attached to a real agent Room connected to a LoopbackServer."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleConfig, LifecycleManager, Session
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.session import Transition
from livekit_loopback.support import WAIT, Recorder, no_leaks, webrtc_warmed_up

__all__ = ["ROOM", "Agent", "MakeAgent", "command_env", "no_leaks", "webrtc_warmed_up"]

ROOM = "e2e-room"


def command_env(server: Any) -> dict[str, str]:
    """This process's environment plus ``server``'s URL and credentials, as a user's shell
    would pass them to a ``livekit-lifecycle`` command (``LIVEKIT_URL``...)."""
    return {
        **os.environ,
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
    }


# Without the `testing` extra there is no server to test against.
collect_ignore_glob = [] if importlib.util.find_spec("aiortc") else ["test_*.py"]


@dataclass
class Agent:
    """The agent side: its real connected Room, its manager, and what they saw."""

    room: rtc.Room
    manager: LifecycleManager
    events: Recorder
    cleanups: list[tuple[str, str, frozenset[str], int | None]] = field(default_factory=list)
    """One ``(key, sid, tracks, disconnect_reason)`` per cleanup callback call."""
    removed: list[str] = field(default_factory=list)
    """Keys of the sessions removed so far, in order."""
    _removal: asyncio.Event = field(default_factory=asyncio.Event)

    def cleaned(self, key: str) -> list[str]:
        """Sids of ``key``'s connections that were cleaned, in order."""
        return [sid for k, sid, _, _ in self.cleanups if k == key]

    def on_removed(self, session: Session) -> None:
        self.removed.append(session.key)
        self._removal.set()

    async def wait_removed(self, *keys: str, timeout: float = WAIT) -> None:
        """Wait until the sessions under ``keys`` have been removed (now or before)."""

        async def until_removed() -> None:
            while not set(keys) <= set(self.removed):
                self._removal.clear()
                await self._removal.wait()

        try:
            await asyncio.wait_for(until_removed(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{keys} not removed within {timeout}s: {self.removed}") from None


MakeAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture(autouse=True)
def _leak_check(no_leaks: None) -> None:
    """Pulls ``no_leaks`` in first, so its checks run after every other teardown."""


@pytest.fixture
async def make_agent(loopback_server: Any) -> AsyncIterator[MakeAgent]:
    """Connects the agent (``kind="agent"``) and attaches a manager built from ``config``.

    At teardown: the manager is closed and must hold no session and no task,
    every recorded transition must be an edge of the chart, and the room is
    disconnected.
    """
    agents: list[Agent] = []
    off_chart: list[tuple[str, Transition]] = []

    async def make(identity: str = "agent", **config: Any) -> Agent:
        room = await loopback_server.connect(identity, ROOM, kind="agent")
        manager = LifecycleManager(LifecycleConfig(**config))
        agent = Agent(room, manager, Recorder())

        def cleanup(session: Session) -> None:
            agent.cleanups.append(
                (session.key, session.sid, session.tracks, session.disconnect_reason)
            )

        def check_edge(session: Session, transition: Transition) -> None:
            if not PARTICIPANT_CHART.is_edge(
                transition.source, transition.dest, transition.trigger
            ):
                off_chart.append((session.key, transition))

        manager.add_cleanup(cleanup)
        manager.on("state_changed", check_edge)
        manager.on("removed", agent.on_removed)
        # The manager's handlers are registered before the recorder's: once
        # the recorder has seen an event, the manager has handled it.
        manager.attach(room)
        agent.events = Recorder.on(room)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.manager.aclose()
        assert dict(agent.manager.sessions) == {}
        assert InternalView(agent.manager).tasks == set()
        await agent.room.disconnect()
    assert off_chart == []
