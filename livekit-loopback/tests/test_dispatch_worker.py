"""Agent dispatch with a real livekit-agents worker (`start` mode), its job in its own process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")
pytest.importorskip("livekit.agents", reason="needs livekit-agents")

from livekit_loopback import LoopbackServer
from livekit_loopback.agent_worker import AgentWorker

pytestmark = pytest.mark.e2e

ROOM = "room"
START = 30.0  # importing livekit.agents and warming one job process: ~3 s here
# The job's agent says whom it saw, and how many participants RoomService lists, in its
# own attributes (the server sees them); it deletes the room when its user asks.
AGENT = """
from livekit import api
from livekit.agents import AgentServer, JobContext, cli

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    user = await ctx.wait_for_participant()
    listed = await ctx.api.room.list_participants(api.ListParticipantsRequest(room=ctx.room.name))
    await ctx.room.local_participant.set_attributes(
        {"saw": user.identity, "listed": str(len(listed.participants))}
    )
    if user.metadata == "delete the room":
        await ctx.delete_room()


if __name__ == "__main__":
    cli.run_app(server)
"""


async def test_a_real_worker_runs_jobs_until_their_room_is_deleted(
    loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    agent_file = tmp_path / "agent.py"
    agent_file.write_text(AGENT)
    async with AgentWorker(
        agent_file,
        url=loopback_server.url,
        api_key=loopback_server.api_key,
        api_secret=loopback_server.api_secret,
        log_path=tmp_path / "worker.log",
    ) as worker:
        registered = await loopback_server.wait_for_worker(timeout=START)
        assert registered.agent_name == "" and registered.status == "available"

        await loopback_server.connect("alice", ROOM)
        job = await loopback_server.wait_for_job(ROOM, timeout=START)
        assert job.worker_id == registered.id and job.participant_identity == f"agent-{job.id}"

        def agent_saw_alice() -> bool:
            seen = loopback_server.participant(ROOM, job.participant_identity)
            return seen is not None and seen.attributes.get("saw") == "alice"

        await loopback_server.wait_until(agent_saw_alice, timeout=START)
        agent = loopback_server.participant(ROOM, job.participant_identity)
        assert agent is not None and agent.attributes["lk.agent_name"] == ""
        assert agent.attributes["listed"] == "2"  # ctx.api.room: alice and the agent

        # Room deleted: JobTermination, the job process ends, the worker reports success.
        await loopback_server.close_room(ROOM)
        ended = await loopback_server.wait_for_job(ROOM, status="success", timeout=START)
        assert ended.id == job.id and ended.terminated == "room closed"

        # The job deletes its own room (ctx.delete_room(), Twirp DeleteRoom): terminated too.
        await loopback_server.connect("bob", "other", metadata="delete the room")
        await loopback_server.wait_until(
            lambda: "other" not in loopback_server.rooms, timeout=START
        )
        other = await loopback_server.wait_for_job("other", status="success", timeout=START)
        assert other.terminated == "room closed"
        assert await worker.stop(signal.SIGINT) == 0
    assert loopback_server.workers == ()
