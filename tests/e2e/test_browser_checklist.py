"""The seed's testing checklist, in a real browser.

The user is livekit-client (npm, in headless Chromium) on the test page; the
agent is a real ``rtc.Room`` connected to the same LoopbackServer with a
``LifecycleManager`` attached (``make_agent``), or a livekit-agents job with a
real ``AgentSession`` (``for_job``). On failure, each tab's screenshot,
console log and events are saved under the test's ``tmp_path/browser``.

The server forwards media, so after a refresh the agent's subscription moves
to the reloaded page's track, and the agent hears that page's microphone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State
from livekit_loopback import LoopbackServer
from livekit_loopback.audio import dominant_frequency, record
from livekit_loopback.browser_client import BrowserParticipant, ClientPageServer
from livekit_loopback.support import eventually
from tests.conftest import path
from tests.e2e.conftest import ROOM, Agent, MakeAgent
from tests.e2e.test_reconnects import BACK_FROM_GRACE, CLEANED_INTO_GRACE, FIRST_CONNECTION

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

REASON = rtc.DisconnectReason
SLOW = 30.0
"""Chromium and WebRTC on a loaded two-core machine: generous, but never waited out."""


async def open_user(
    server: LoopbackServer, pages: ClientPageServer, identity: str
) -> BrowserParticipant:
    return await pages.open(server.url, server.token(identity, ROOM), name=identity)


async def connection(manager: LifecycleManager, key: str, sid: str) -> Session:
    """The session under ``key`` once it is active on connection ``sid``."""

    def on_it() -> bool:
        session = manager.get(key)
        return session is not None and session.sid == sid and session.state is State.ACTIVE

    assert await eventually(on_it, SLOW), f"{key} not active on {sid}: {manager.get(key)}"
    session = manager.get(key)
    assert session is not None
    return session


async def alice_joins(
    server: LoopbackServer, pages: ClientPageServer, agent: Agent
) -> tuple[BrowserParticipant, Session]:
    """alice's tab, connected; her session active on it, with user id ``user-42``."""
    page = await open_user(server, pages, "alice")
    session = await connection(agent.manager, "alice", (await page.state())["sid"])
    agent.manager.set_user_id("alice", "user-42")
    return page, session


async def published(page: BrowserParticipant) -> str:
    """The sid of the (one) track the page published."""
    tracks = await page.wait_for("lk.published.length === 1 && lk.published", SLOW)
    return str(tracks[0])


async def test_user_refresh_keeps_the_session_and_cleans_once(
    loopback_server: LoopbackServer, make_agent: MakeAgent, browser_client: ClientPageServer
) -> None:
    agent = await make_agent(grace_period=30.0)
    alice, session = await alice_joins(loopback_server, browser_client, agent)
    first_sid = session.sid
    first_track = await published(alice)
    assert await eventually(lambda: session.tracks == {first_track}, SLOW)
    await agent.events.wait_for("track_subscribed", SLOW, track=first_track)
    session.data["topic"] = "billing"

    new_sid = await alice.reload()  # F5: livekit-client leaves on pagehide, the page joins again
    assert new_sid is not None and new_sid != first_sid
    assert await connection(agent.manager, "alice", new_sid) is session
    new_track = await published(alice)
    assert await eventually(lambda: session.tracks == {new_track}, SLOW)
    # The agent's subscription moves to the new track, and it hears the reloaded
    # page's microphone: Chromium's fake one beeps at 400 Hz.
    await agent.events.wait_for("track_unsubscribed", SLOW, track=first_track)
    await agent.events.wait_for("track_subscribed", SLOW, track=new_track)
    heard = agent.room.remote_participants["alice"].track_publications[new_track].track
    assert heard is not None
    assert abs(dominant_frequency(await record(heard, seconds=1.0, timeout=SLOW)) - 400) < 20

    assert new_track != first_track
    assert session.user_id == "user-42" and session.data == {"topic": "billing"}
    assert (session.connections, session.reconnects, session.cleanups) == (2, 1, 1)
    assert [(k, sid, reason) for k, sid, _, reason in agent.cleanups] == [
        ("alice", first_sid, REASON.CLIENT_INITIATED)
    ]
    assert path(session) == FIRST_CONNECTION + CLEANED_INTO_GRACE + BACK_FROM_GRACE
    state = await alice.state()
    assert state["state"] == "connected" and state["remote"] == {
        "agent": agent.room.local_participant.sid
    }
    alice.console.raise_for_errors("removeTrack")


async def test_five_reloads_within_a_second_clean_each_connection_once(
    loopback_server: LoopbackServer, make_agent: MakeAgent, browser_client: ClientPageServer
) -> None:
    agent = await make_agent(grace_period=30.0)
    alice, session = await alice_joins(loopback_server, browser_client, agent)

    for _ in range(5):
        # Each reload comes as soon as the page's script runs, and interrupts it
        # wherever it got to: some connections join and leave, some are cut
        # before they finish joining.
        await alice.wait_for("true", SLOW)
        await alice.page.reload(wait_until="commit")
    final_sid = await alice.wait_ready(SLOW)
    assert await connection(agent.manager, "alice", final_sid) is session
    await agent.manager.idle()

    joined = [
        e.sid or "" for e in agent.events.named("participant_connected") if e.identity == "alice"
    ]
    cleaned = agent.cleaned("alice")
    assert len(cleaned) == len(set(cleaned)), f"a connection was cleaned twice: {cleaned}"
    assert sorted(cleaned) == sorted(set(joined) - {final_sid}), (joined, cleaned)
    assert session.cleanups == len(cleaned) and session.connections == len(set(joined))
    assert session.user_id == "user-42" and session.state is State.ACTIVE
    assert [(p.identity, p.sid) for p in loopback_server.participants(ROOM)] == [
        ("agent", agent.room.local_participant.sid),
        ("alice", final_sid),
    ]
    # Interrupted joins may log their own aborted connection attempts; what
    # must never appear is a removeTrack failure or an unhandled error.
    assert [e for e in alice.console.entries if e.kind == "pageerror"] == []
    assert alice.console.matching("removeTrack") == []


async def test_closing_the_tab_and_reopening_inside_the_grace_window_keeps_the_session(
    loopback_server: LoopbackServer, make_agent: MakeAgent, browser_client: ClientPageServer
) -> None:
    agent = await make_agent(grace_period=30.0)
    first, session = await alice_joins(loopback_server, browser_client, agent)
    first_sid = session.sid

    await first.close()
    assert await agent.manager.wait_for("alice", State.GRACE, SLOW) is session
    assert session.disconnect_reason == REASON.CLIENT_INITIATED and session.cleanups == 1

    second = await open_user(loopback_server, browser_client, "alice")
    assert await connection(agent.manager, "alice", (await second.state())["sid"]) is session
    assert session.user_id == "user-42" and session.reconnects == 1
    assert agent.cleaned("alice") == [first_sid] and agent.removed == []
    first.console.raise_for_errors("removeTrack")
    second.console.raise_for_errors("removeTrack")


async def test_closing_the_tab_and_reopening_after_the_grace_window_starts_afresh(
    loopback_server: LoopbackServer, make_agent: MakeAgent, browser_client: ClientPageServer
) -> None:
    agent = await make_agent(grace_period=1.0)
    first, old = await alice_joins(loopback_server, browser_client, agent)
    first_sid = old.sid
    old.data["topic"] = "billing"

    await first.close()
    await agent.wait_removed("alice", timeout=SLOW)
    assert old.state is State.REMOVED

    second = await open_user(loopback_server, browser_client, "alice")
    fresh = await connection(agent.manager, "alice", (await second.state())["sid"])
    assert fresh is not old
    assert fresh.user_id is None and fresh.data == {}
    assert (fresh.connections, fresh.reconnects, fresh.cleanups) == (1, 0, 0)
    assert agent.cleaned("alice") == [first_sid] and agent.removed == ["alice"]
    assert path(old)[-1] == ("grace", "expire", "removed")
    first.console.raise_for_errors("removeTrack")
    second.console.raise_for_errors("removeTrack")


@pytest.mark.loopback(leave_timeout=1.0)
async def test_a_crashed_tab_is_noticed_by_the_server_and_the_user_comes_back(
    loopback_server: LoopbackServer, make_agent: MakeAgent, browser_client: ClientPageServer
) -> None:
    agent = await make_agent(grace_period=30.0)
    first, session = await alice_joins(loopback_server, browser_client, agent)
    first_sid = session.sid

    await first.crash()  # no unload handler, no leave: the socket just closes
    assert await agent.manager.wait_for("alice", State.GRACE, SLOW) is session
    assert session.disconnect_reason == REASON.SIGNAL_CLOSE and session.cleanups == 1

    second = await open_user(loopback_server, browser_client, "alice")
    assert await connection(agent.manager, "alice", (await second.state())["sid"]) is session
    assert session.user_id == "user-42" and session.reconnects == 1
    assert agent.cleaned("alice") == [first_sid]
    second.console.raise_for_errors("removeTrack")


class Resource:
    """An application resource (think TTS client) that counts how often it is closed."""

    def __init__(self) -> None:
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


async def test_graceful_shutdown_while_browsers_are_connected(
    loopback_server: LoopbackServer, make_agent: MakeAgent, browser_client: ClientPageServer
) -> None:
    agent = await make_agent(grace_period=30.0)
    resource = Resource()
    agent.manager.add_resource(resource)
    users = {name: await open_user(loopback_server, browser_client, name) for name in ("a", "b")}
    sids = {name: (await page.state())["sid"] for name, page in users.items()}
    sessions = {name: await connection(agent.manager, name, sid) for name, sid in sids.items()}

    await agent.manager.aclose()
    await agent.room.disconnect()  # the job ends: the agent leaves the room

    assert sorted((key, sid) for key, sid, _, _ in agent.cleanups) == sorted(sids.items())
    assert sorted(agent.removed) == sorted(users) and dict(agent.manager.sessions) == {}
    for session in sessions.values():
        assert session.state is State.REMOVED and session.cleanups == 1
    assert resource.closes == 1
    agent_sid = agent.room.local_participant.sid
    for page in users.values():
        left = await page.wait_for(
            "lk.events.find((e) => e.name === 'participant_disconnected'"
            " && e.identity === 'agent')",
            SLOW,
        )
        assert left["sid"] == agent_sid
        state = await page.state()
        assert state["state"] == "connected" and "agent" not in state["remote"]
        page.console.raise_for_errors("removeTrack")


async def test_refresh_with_a_real_agent_session_relinks_it(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    pytest.importorskip("livekit.agents", reason="needs the 'agents' extra")
    from livekit.agents import Agent, AgentSession, CloseEvent
    from livekit.agents.testing import fake_job_context
    from livekit.agents.voice.room_io import RoomOptions

    from livekit_lifecycle.agents import for_job

    agent_room = await loopback_server.connect("agent", ROOM, kind="agent")
    agent_session: AgentSession[Any] = AgentSession()
    closes: list[CloseEvent] = []
    agent_session.on("close", closes.append)
    with fake_job_context(room=agent_room, agent_identity="agent") as ctx:
        manager = await for_job(
            ctx, session=agent_session, config=LifecycleConfig(grace_period=30.0)
        )
        try:
            # No audio output: the session has no TTS, and nothing here needs one.
            await manager.start_session(
                Agent(instructions="test"), room_options=RoomOptions(audio_output=False)
            )
            alice = await open_user(loopback_server, browser_client, "alice")
            first_sid = (await alice.state())["sid"]
            session = await connection(manager.manager, "alice", first_sid)
            linked = agent_session.room_io.linked_participant
            assert await eventually(lambda: _linked_sid(agent_session) == first_sid, SLOW)
            manager.set_user_id("alice", "user-42")

            new_sid = await alice.reload()
            assert new_sid is not None
            assert await connection(manager.manager, "alice", new_sid) is session
            # RoomIO re-linked the same identity by itself; the session stayed open.
            assert await eventually(lambda: _linked_sid(agent_session) == new_sid, SLOW)
            assert agent_session.room_io.linked_participant is not linked
            assert manager.linked_session is session and session.user_id == "user-42"
            assert session.cleanups == 1 and closes == []
            alice.console.raise_for_errors("removeTrack")
        finally:
            await manager.aclose()
            await agent_session.aclose()
            await asyncio.wait_for(agent_room.disconnect(), SLOW)


def _linked_sid(agent_session: Any) -> str | None:
    participant = agent_session.room_io.linked_participant
    return None if participant is None else str(participant.sid)
