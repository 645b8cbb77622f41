"""Users who come back: a browser refresh, a second tab, a lost leave, a killed client process.

A manager attached to a real agent Room connected to a LoopbackServer;
every user is a real ``rtc.Room`` (or a real client in another process).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from livekit import rtc

from livekit_lifecycle import State
from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT, Recorder
from tests.conftest import path
from tests.e2e.conftest import ROOM, MakeAgent

pytestmark = pytest.mark.e2e

REASON = rtc.DisconnectReason
FIRST_CONNECTION = [("connecting", "activate", "active")]
CLEANED_INTO_GRACE = [
    ("active", "disconnect", "disconnecting"),
    ("disconnecting", "cleanup_done", "cleaned"),
    ("cleaned", "hold", "grace"),
]
BACK_FROM_GRACE = [
    ("grace", "reconnect", "reconnected"),
    ("reconnected", "resume", "connecting"),
    ("connecting", "activate", "active"),
]
CLIENT_PROCESS = Path(__file__).with_name("client_process.py")


async def test_browser_refresh_reconnects_inside_the_window(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=10.0)
    page = await loopback_server.connect("alice", ROOM)
    first = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    first_sid = first.sid
    agent.manager.set_user_id("alice", "user-42")

    await page.disconnect()  # the page unloads: the SDK sends its leave
    await agent.manager.wait_for("alice", State.GRACE, WAIT)
    await loopback_server.connect("alice", ROOM)  # the reloaded page joins again
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)

    assert session is first  # the same session, bound to the new connection
    assert session.sid != first_sid
    assert session.user_id == "user-42"
    assert (session.connections, session.reconnects, session.cleanups) == (2, 1, 1)
    assert agent.cleanups == [("alice", first_sid, frozenset(), REASON.CLIENT_INITIATED)]
    assert path(session) == FIRST_CONNECTION + CLEANED_INTO_GRACE + BACK_FROM_GRACE
    assert session.history[-1].sid == session.sid


async def test_second_tab_with_the_same_identity_takes_the_session_over(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=10.0)
    tab1 = await loopback_server.connect("alice", ROOM)
    tab1_events = Recorder.on(tab1)
    first = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    old_sid = first.sid
    agent.manager.set_user_id("alice", "user-42")

    tab2 = await loopback_server.connect("alice", ROOM)  # same identity, tab 1 still connected
    new_sid = tab2.local_participant.sid
    assert (await tab1_events.wait_for("disconnected")).reason == REASON.DUPLICATE_IDENTITY
    gone = await agent.events.wait_for("participant_disconnected", identity="alice")
    joined = await agent.events.wait_for("participant_connected", sid=new_sid)
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)

    # The SDK reports the old connection gone before the new one joins.
    assert (gone.sid, gone.reason) == (old_sid, REASON.DUPLICATE_IDENTITY)
    assert agent.events.events.index(gone) < agent.events.events.index(joined)
    assert session is first and session.sid == new_sid != old_sid
    assert session.user_id == "user-42"
    assert session.cleanups == 1 and agent.cleaned("alice") == [old_sid]
    assert path(session) == FIRST_CONNECTION + CLEANED_INTO_GRACE + BACK_FROM_GRACE
    assert [p.sid for p in loopback_server.participants(ROOM) if p.identity == "alice"] == [
        session.sid
    ]


@pytest.mark.loopback(leave_timeout=8.0)
async def test_lost_leave_then_the_user_rejoins_before_the_server_notices(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=10.0)
    page = await loopback_server.connect("alice", ROOM)
    page_events = Recorder.on(page)
    first = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    old_sid = first.sid
    agent.manager.set_user_id("alice", "user-42")

    await loopback_server.drop_signal("alice")  # the tab is closed; its leave never arrives
    await page_events.wait_for("disconnected")  # the dead page's own SDK gives up
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.sid == old_sid and not view.signal_connected
    assert first.state is State.ACTIVE  # nobody has told the agent anything yet

    await loopback_server.connect("alice", ROOM)  # the user opens the app again
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)

    assert session is first and session.sid != old_sid
    assert session.user_id == "user-42" and session.cleanups == 1
    assert agent.cleanups == [("alice", old_sid, frozenset(), REASON.DUPLICATE_IDENTITY)]
    assert path(session) == FIRST_CONNECTION + CLEANED_INTO_GRACE + BACK_FROM_GRACE


@pytest.mark.loopback(leave_timeout=0.5)
async def test_lost_leave_then_the_user_rejoins_inside_the_grace_window(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=10.0)
    await loopback_server.connect("alice", ROOM)
    first = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    old_sid = first.sid
    agent.manager.set_user_id("alice", "user-42")

    await loopback_server.drop_signal("alice")
    session = await agent.manager.wait_for("alice", State.GRACE, WAIT)
    assert session.disconnect_reason == REASON.SIGNAL_CLOSE
    assert loopback_server.participant(ROOM, "alice") is None

    await loopback_server.connect("alice", ROOM)
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    assert session is first and session.sid != old_sid
    assert session.user_id == "user-42" and session.cleanups == 1
    assert agent.cleanups == [("alice", old_sid, frozenset(), REASON.SIGNAL_CLOSE)]
    assert path(session) == FIRST_CONNECTION + CLEANED_INTO_GRACE + BACK_FROM_GRACE


@pytest.mark.loopback(leave_timeout=0.5)
async def test_killed_client_process_is_cleaned_then_expires(
    loopback_server: LoopbackServer, make_agent: MakeAgent
) -> None:
    agent = await make_agent(grace_period=1.0)
    removed = asyncio.get_running_loop().create_future()
    agent.manager.once("removed", removed.set_result)
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT_PROCESS),
        loopback_server.url,
        loopback_server.token("alice", ROOM),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), WAIT * 2)
        assert line.startswith(b"ready PA_"), line
        client_sid = line.split()[1].decode()
        session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
        assert session.sid == client_sid
    finally:
        if client.returncode is None:
            client.send_signal(signal.SIGKILL)
        await client.wait()
    assert client.returncode == -signal.SIGKILL

    # No leave: the server notices the dead socket, waits leave_timeout for
    # a resume that never comes, then tells the room; the grace window runs out.
    assert await asyncio.wait_for(removed, WAIT) is session
    assert session.disconnect_reason == REASON.SIGNAL_CLOSE
    assert session.state is State.REMOVED and agent.manager.get("alice") is None
    assert agent.cleaned("alice") == [client_sid]
    assert path(session) == [*FIRST_CONNECTION, *CLEANED_INTO_GRACE, ("grace", "expire", "removed")]
