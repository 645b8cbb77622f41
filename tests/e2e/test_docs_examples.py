"""The examples of docs/testing.md, as written there (keep the two in step)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.testing import LoopbackServer, RoomDriver
from tests.loopback.support import needs_network

pytestmark = pytest.mark.e2e

CLIENT = """
import asyncio, sys
from livekit import rtc

async def main():
    room = rtc.Room()
    await room.connect(sys.argv[1], sys.argv[2])
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_refresh_keeps_the_user() -> None:
    async with RoomDriver() as driver, LifecycleManager() as manager:
        manager.attach(driver.room)
        driver.connect("alice", active=True)
        manager.set_user_id("alice", "u-1")
        driver.refresh("alice")  # leave, then join with a new sid
        session = await manager.wait_for("alice", State.ACTIVE, timeout=2)
        assert session.user_id == "u-1" and session.cleanups == 1


@needs_network
async def test_refresh_over_a_real_connection() -> None:
    async with LoopbackServer() as server:
        agent = await server.connect("agent", "demo", kind="agent")
        async with LifecycleManager(LifecycleConfig(grace_period=10)) as manager:
            manager.attach(agent)
            page = await server.connect("alice", "demo")
            await manager.wait_for("alice", State.ACTIVE, timeout=10)
            await page.disconnect()  # the page unloads
            await server.connect("alice", "demo")  # and loads again
            session = await manager.wait_for("alice", State.ACTIVE, timeout=10)
            assert session.reconnects == 1 and session.cleanups == 1


@pytest.mark.loopback(leave_timeout=1.0)
async def test_lost_leave(loopback_server: LoopbackServer) -> None:
    agent = await loopback_server.connect("agent", "room", kind="agent")
    async with LifecycleManager() as manager:
        manager.attach(agent)
        await loopback_server.connect("alice", "room")
        await manager.wait_for("alice", State.ACTIVE, timeout=10)
        await loopback_server.drop_signal("alice")  # the tab is closed, no leave
        session = await manager.wait_for("alice", State.GRACE, timeout=10)
        assert session.cleanups == 1


@pytest.mark.loopback(leave_timeout=0.5)
async def test_killing_a_client_process(loopback_server: LoopbackServer) -> None:
    server = loopback_server
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        server.url,
        server.token("alice", "room"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 20)
    view = await server.wait_for_participant("room", "alice", timeout=10)
    assert view is not None
    process.send_signal(signal.SIGKILL)
    await process.wait()
    await server.wait_for_participant("room", "alice", "gone", timeout=10)


async def test_running_a_job_on_a_real_connection(loopback_server: LoopbackServer) -> None:
    pytest.importorskip("livekit.agents", reason="needs the 'agents' extra")
    from livekit.agents.testing import fake_job_context

    server = loopback_server
    agent_room = await server.connect("agent", "room", kind="agent")
    with fake_job_context(room=agent_room) as ctx:
        manager = await LifecycleManager.for_job(ctx)
        await server.connect("alice", "room")
        await manager.wait_for("alice", State.ACTIVE, timeout=10)
        await manager.aclose()


async def test_hearing_what_a_user_publishes(loopback_server: LoopbackServer) -> None:
    from livekit_lifecycle.testing.audio import Tone, dominant_frequency, record

    server = loopback_server
    agent = await server.connect("agent", "room", kind="agent")
    subscribed = asyncio.get_running_loop().create_future()
    agent.on(
        "track_subscribed", lambda track, publication, participant: subscribed.set_result(track)
    )
    user = await server.connect("alice", "room")
    async with Tone(440) as tone:
        await user.local_participant.publish_track(tone.track)
        track = await asyncio.wait_for(subscribed, 10)
        assert abs(dominant_frequency(await record(track, seconds=0.5)) - 440) < 10
