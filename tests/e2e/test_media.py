"""An agent hears a user's microphone through the LoopbackServer, across a crash of the user."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livekit_lifecycle import State
from livekit_loopback import LoopbackServer
from livekit_loopback.audio import dominant_frequency, record
from livekit_loopback.support import WAIT, eventually
from tests.e2e.conftest import ROOM, MakeAgent

pytestmark = pytest.mark.e2e

CLIENT_PROCESS = Path(__file__).with_name("client_process.py")
PITCH_TOLERANCE = 10.0


class UserProcess:
    """A user publishing a tone from its own process (so it can be killed)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.sid = ""
        self.track = ""

    async def started(self) -> UserProcess:
        assert self.process.stdout is not None
        for _ in range(2):
            line = await asyncio.wait_for(self.process.stdout.readline(), WAIT * 2)
            word, _, value = line.decode().strip().partition(" ")
            if word == "ready":
                self.sid = value
            elif word == "published":
                self.track = value
        assert self.sid.startswith("PA_") and self.track.startswith("TR_"), (self.sid, self.track)
        return self

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


@pytest.fixture
async def user_processes(loopback_server: LoopbackServer) -> AsyncIterator[list[UserProcess]]:
    started: list[UserProcess] = []
    yield started
    for user in started:
        await user.kill()


async def _start_user(
    server: LoopbackServer, started: list[UserProcess], identity: str, tone_hz: float
) -> UserProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT_PROCESS),
        server.url,
        server.token(identity, ROOM),
        str(tone_hz),
        stdout=asyncio.subprocess.PIPE,
    )
    user = UserProcess(process)
    started.append(user)
    return await user.started()


@pytest.mark.loopback(leave_timeout=0.5)
async def test_agent_hears_the_user_then_the_user_who_came_back_after_a_crash(
    loopback_server: LoopbackServer, make_agent: MakeAgent, user_processes: list[UserProcess]
) -> None:
    agent = await make_agent(grace_period=10.0)
    tasks_before = loopback_server.pending_tasks

    first = await _start_user(loopback_server, user_processes, "alice", 440)
    await agent.events.wait_for("track_subscribed", track=first.track)
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    track = agent.room.remote_participants["alice"].track_publications[first.track].track
    assert track is not None
    assert abs(dominant_frequency(await record(track, 0.5)) - 440) < PITCH_TOLERANCE

    await first.kill()  # no leave: the server notices after leave_timeout
    await agent.events.wait_for("track_unsubscribed", track=first.track)
    await agent.manager.wait_for("alice", State.GRACE, WAIT)

    second = await _start_user(loopback_server, user_processes, "alice", 660)
    assert await agent.manager.wait_for("alice", State.ACTIVE, WAIT) is session
    await agent.events.wait_for("track_subscribed", track=second.track)
    track = agent.room.remote_participants["alice"].track_publications[second.track].track
    assert track is not None
    assert abs(dominant_frequency(await record(track, 0.5)) - 660) < PITCH_TOLERANCE
    assert session.cleanups == 1 and session.tracks == {second.track}

    await second.kill()
    await loopback_server.wait_for_participant(ROOM, "alice", "gone", timeout=WAIT)
    # Nothing of either connection is left running on the server.
    assert await eventually(lambda: loopback_server.pending_tasks <= tasks_before, WAIT)
