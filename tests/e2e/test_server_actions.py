"""The server ends connections: a participant removed, the room deleted. No grace for either."""

from __future__ import annotations

import pytest
from livekit import rtc

from livekit_lifecycle import Session, State
from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT, Recorder
from tests.conftest import path
from tests.e2e.conftest import ROOM, MakeAgent

pytestmark = pytest.mark.e2e

REASON = rtc.DisconnectReason
GONE_FOR_GOOD = [
    ("connecting", "activate", "active"),
    ("active", "disconnect", "disconnecting"),
    ("disconnecting", "cleanup_done", "cleaned"),
    ("cleaned", "release", "removed"),
]
SHUT_DOWN = [
    ("connecting", "activate", "active"),
    ("active", "shutdown", "disconnecting"),
    ("disconnecting", "cleanup_done", "cleaned"),
    ("cleaned", "release", "removed"),
]


async def test_removed_participant_is_removed_without_grace(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=30.0)
    user = await loopback_server.connect("alice", ROOM)
    user_events = Recorder.on(user)
    await loopback_server.connect("bob", ROOM)
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    await agent.manager.wait_for("bob", State.ACTIVE, WAIT)
    sid = session.sid

    await loopback_server.remove_participant(ROOM, "alice")

    assert (await user_events.wait_for("disconnected")).reason == REASON.PARTICIPANT_REMOVED
    await agent.wait_removed("alice")
    assert agent.manager.get("alice") is None
    assert agent.cleanups == [("alice", sid, frozenset(), REASON.PARTICIPANT_REMOVED)]
    assert path(session) == GONE_FOR_GOOD
    bob = agent.manager.get("bob")
    assert bob is not None and bob.state is State.ACTIVE and bob.cleanups == 0
    with pytest.raises(LookupError, match="alice"):
        await loopback_server.remove_participant(ROOM, "alice")


@pytest.mark.parametrize("agent_joins_first", [True, False], ids=["agent-first", "agent-last"])
async def test_deleted_room_removes_every_session_without_grace(
    loopback_server: LoopbackServer, make_agent: MakeAgent, agent_joins_first: bool
) -> None:
    # The server removes participants in join order. An agent that joined
    # first is told first: its room disconnects and the manager shuts down.
    # One that joined last first hears every user leave with ROOM_DELETED.
    if agent_joins_first:
        agent = await make_agent(grace_period=30.0)
    users = {name: await loopback_server.connect(name, ROOM) for name in ("alice", "bob")}
    if not agent_joins_first:
        agent = await make_agent(grace_period=30.0)
    user_events = {name: Recorder.on(room) for name, room in users.items()}
    sessions: dict[str, Session] = {}
    for name in users:
        sessions[name] = await agent.manager.wait_for(name, State.ACTIVE, WAIT)
    sids = {name: session.sid for name, session in sessions.items()}

    await loopback_server.close_room(ROOM)

    assert (await agent.events.wait_for("disconnected")).reason == REASON.ROOM_DELETED
    for events in user_events.values():
        assert (await events.wait_for("disconnected")).reason == REASON.ROOM_DELETED
    await agent.wait_removed(*users)
    await agent.manager.aclose()  # waits for the shutdown the disconnect started, if any
    assert dict(agent.manager.sessions) == {}
    assert ROOM not in loopback_server.rooms
    assert sorted((key, sid) for key, sid, _, _ in agent.cleanups) == sorted(sids.items())
    expected = SHUT_DOWN if agent_joins_first else GONE_FOR_GOOD
    for session in sessions.values():
        assert path(session) == expected
        assert session.cleanups == 1
    if not agent_joins_first:
        assert {reason for *_, reason in agent.cleanups} == {REASON.ROOM_DELETED}
