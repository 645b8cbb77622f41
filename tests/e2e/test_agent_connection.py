"""The agent's own connection: a signal resume, a full reconnect, and a graceful shutdown."""

from __future__ import annotations

import pytest
from livekit import rtc
from livekit.rtc._proto.room_pb2 import SimulateScenarioKind

from livekit_lifecycle import State
from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT
from tests.conftest import path
from tests.e2e.conftest import ROOM, MakeAgent

pytestmark = pytest.mark.e2e

USERS = ("alice", "bob")
# The SDK's resume waits for its PeerConnection to settle for a few seconds.
RESUME_WAIT = 20.0


async def test_agent_signal_resume_changes_nothing(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=10.0)
    for name in USERS:
        await loopback_server.connect(name, ROOM)
    sessions = {name: await agent.manager.wait_for(name, State.ACTIVE, WAIT) for name in USERS}
    for name in USERS:
        agent.manager.set_user_id(name, f"user-{name}")
    before = {name: (s.sid, s.history) for name, s in sessions.items()}
    agent_sid = agent.room.local_participant.sid

    await agent.room.simulate_scenario(SimulateScenarioKind.SIMULATE_SIGNAL_RECONNECT)
    await agent.events.wait_for("reconnecting")
    await agent.events.wait_for("reconnected", timeout=RESUME_WAIT)

    # A resume keeps the same participant: nobody left, nothing to clean.
    assert agent.room.local_participant.sid == agent_sid
    assert agent.events.named("participant_disconnected") == []
    assert len(agent.events.named("participant_connected")) == len(USERS)
    assert agent.cleanups == []
    for name, session in sessions.items():
        assert agent.manager.get(name) is session
        assert session.state is State.ACTIVE
        assert (session.sid, session.history) == before[name]
        assert session.user_id == f"user-{name}" and session.cleanups == 0
    view = loopback_server.participant(ROOM, "agent")
    assert view is not None and view.sid == agent_sid and view.signal_connected


async def test_agent_full_reconnect_brings_every_session_back(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=10.0)
    for name in USERS:
        await loopback_server.connect(name, ROOM)
    sessions = {name: await agent.manager.wait_for(name, State.ACTIVE, WAIT) for name in USERS}
    for name in USERS:
        agent.manager.set_user_id(name, f"user-{name}")
    sids = {name: s.sid for name, s in sessions.items()}
    agent_sid = agent.room.local_participant.sid

    await agent.room.simulate_scenario(SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
    await agent.events.wait_for("reconnected", timeout=RESUME_WAIT)

    # The agent rejoined as a new participant (the SDK keeps the old sid on
    # its LocalParticipant: ask the server); the users never left, so they
    # come back with the same sids, and each session through its grace window.
    view = loopback_server.participant(ROOM, "agent")
    assert view is not None and view.sid != agent_sid
    for name, session in sessions.items():
        assert await agent.manager.wait_for(name, State.ACTIVE, WAIT) is session
        assert session.sid == sids[name]
        assert session.user_id == f"user-{name}"
        assert session.cleanups == 1 and agent.cleaned(name) == [sids[name]]
        assert ("grace", "reconnect", "reconnected") in path(session)
    gone = agent.events.named("participant_disconnected")
    assert sorted(e.identity or "" for e in gone) == sorted(USERS)
    assert {e.reason for e in gone} == {None}  # UNKNOWN_REASON: the SDK made these up


async def test_graceful_shutdown_while_users_are_connected(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=30.0)
    users = {name: await loopback_server.connect(name, ROOM) for name in USERS}
    sessions = {name: await agent.manager.wait_for(name, State.ACTIVE, WAIT) for name in USERS}
    sids = {name: s.sid for name, s in sessions.items()}

    await agent.manager.aclose()

    assert dict(agent.manager.sessions) == {}
    assert sorted(agent.removed) == sorted(USERS)
    assert sorted((key, sid) for key, sid, _, _ in agent.cleanups) == sorted(sids.items())
    for session in sessions.values():
        assert session.state is State.REMOVED and session.cleanups == 1
        assert path(session) == [
            ("connecting", "activate", "active"),
            ("active", "shutdown", "disconnecting"),
            ("disconnecting", "cleanup_done", "cleaned"),
            ("cleaned", "release", "removed"),
        ]
    # The users are untouched: shutting the manager down is the agent's business.
    for name, room in users.items():
        assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
        view = loopback_server.participant(ROOM, name)
        assert view is not None and view.sid == sids[name] and view.state == "active"
    await agent.room.disconnect()
    for room in users.values():
        assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
    await loopback_server.wait_for_participant(ROOM, "agent", "gone", timeout=WAIT)
