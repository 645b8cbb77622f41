"""Agent dispatch seen by a worker: a scripted worker speaks the real protocol over ``/agent``.

The worker here is an aiohttp WebSocket client sending and reading the real
``livekit.protocol.agent`` messages, so each step of the protocol (and each
refusal or lost socket) happens on cue. Users are real ``rtc.Room`` clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

import aiohttp
from livekit import api
from livekit.protocol import agent, models
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT

pytestmark = pytest.mark.e2e

ROOM = "room"


class ScriptedWorker:
    """One ``/agent`` connection: register, then read and answer by hand."""

    def __init__(self, server: LoopbackServer, session: aiohttp.ClientSession) -> None:
        self._server = server
        self._session = session
        self.ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self.id = ""

    async def connect(self, *, token: str | None = None) -> aiohttp.ClientWebSocketResponse[bool]:
        jwt = token or (
            api.AccessToken(self._server.api_key, self._server.api_secret)
            .with_grants(api.VideoGrants(agent=True))
            .to_jwt()
        )
        ws = await self._session.ws_connect(
            self._server.url + "/agent", headers={"Authorization": f"Bearer {jwt}"}
        )
        self.ws = ws
        return ws

    async def register(self, agent_name: str = "") -> str:
        await self.connect()
        await self.send(
            agent.WorkerMessage(
                register=agent.RegisterWorkerRequest(
                    type=agent.JT_ROOM,
                    agent_name=agent_name,
                    version="scripted",
                    allowed_permissions=models.ParticipantPermission(
                        can_publish=True, can_subscribe=True, can_publish_data=True, agent=True
                    ),
                )
            )
        )
        answer = await self.receive("register")
        self.id = answer.register.worker_id
        assert self.id.startswith("AW_")
        return self.id

    async def send(self, message: agent.WorkerMessage) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(message.SerializeToString())

    async def receive(self, kind: str) -> agent.ServerMessage:
        assert self.ws is not None
        frame = await self.ws.receive(timeout=WAIT)
        assert frame.type == aiohttp.WSMsgType.BINARY, frame
        message = agent.ServerMessage.FromString(frame.data)
        assert message.WhichOneof("message") == kind, message
        return message

    async def load(self, load: float, status: agent.WorkerStatus = agent.WS_AVAILABLE) -> None:
        await self.send(
            agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=status, load=load))
        )

    async def answer(self, job: agent.Job, *, available: bool = True) -> None:
        await self.send(
            agent.WorkerMessage(
                availability=agent.AvailabilityResponse(
                    job_id=job.id,
                    available=available,
                    participant_identity=f"agent-{job.id}",
                    participant_name="scripted agent",
                    participant_attributes={"role": "agent"},
                )
            )
        )

    async def accept_next(self) -> agent.JobAssignment:
        request = await self.receive("availability")
        await self.answer(request.availability.job)
        assignment = (await self.receive("assignment")).assignment
        await self.job_status(assignment.job.id, agent.JS_RUNNING)
        return assignment

    async def job_status(self, job_id: str, status: agent.JobStatus, error: str = "") -> None:
        await self.send(
            agent.WorkerMessage(
                update_job=agent.UpdateJobStatus(job_id=job_id, status=status, error=error)
            )
        )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def _registered(server: LoopbackServer, http: aiohttp.ClientSession) -> ScriptedWorker:
    worker = ScriptedWorker(server, http)
    await worker.register()
    await server.wait_for_worker(timeout=WAIT)
    return worker


async def test_a_new_room_dispatches_a_job_with_an_agent_token(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    worker = await _registered(loopback_server, session)
    assert [w.id for w in loopback_server.workers] == [worker.id]

    await loopback_server.connect("alice", ROOM)
    request = (await worker.receive("availability")).availability
    assert request.job.room.name == ROOM and request.job.room.sid.startswith("RM_")
    assert request.job.type == agent.JT_ROOM and request.job.agent_name == ""
    assert request.job.id.startswith("AJ_") and request.job.dispatch_id.startswith("AD_")
    await worker.answer(request.job)
    assignment = (await worker.receive("assignment")).assignment
    assert assignment.url == "" and assignment.job.state.worker_id == worker.id

    claims = api.TokenVerifier(loopback_server.api_key, loopback_server.api_secret).verify(
        assignment.token
    )
    identity = f"agent-{request.job.id}"
    assert (
        claims.identity == identity and claims.kind == "agent" and claims.name == "scripted agent"
    )
    assert claims.video is not None and claims.video.room == ROOM and claims.video.agent
    assert claims.attributes == {"role": "agent", "lk.agent_name": ""}

    await worker.job_status(request.job.id, agent.JS_RUNNING)
    job = await loopback_server.wait_for_job(ROOM, timeout=WAIT)
    assert job.id == request.job.id and job.worker_id == worker.id
    assert job.participant_identity == identity
    assert loopback_server.workers[0].jobs == (job.id,)

    # The job's agent joins with that token: it is an AGENT participant.
    agent_room = await loopback_server.connect(
        identity, ROOM, kind="agent", agent=True
    )  # (the worker's job process would use assignment.token)
    view = await loopback_server.wait_for_participant(ROOM, identity, timeout=WAIT)
    assert view is not None and view.kind == models.ParticipantInfo.AGENT
    await agent_room.disconnect()

    # Its agent left: the job is over (livekit-server: AGENT_LEFT_ROOM).
    assert (await worker.receive("termination")).termination.job_id == job.id
    ended = await loopback_server.wait_for_job(ROOM, status="failed", timeout=WAIT)
    assert ended.terminated == "agent left the room"
    assert ended.error == "agent worker left the room"
    # What the worker says next does not change an ended job (ping: to know it was read).
    await worker.job_status(job.id, agent.JS_SUCCESS)
    await worker.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=7)))
    assert (await worker.receive("pong")).pong.last_timestamp == 7
    assert loopback_server.jobs[0].status == "failed" and not loopback_server.workers[0].jobs


async def test_deleting_the_room_terminates_its_jobs(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    worker = await _registered(loopback_server, session)
    await loopback_server.connect("alice", ROOM)
    assignment = await worker.accept_next()

    await loopback_server.close_room(ROOM)

    assert (await worker.receive("termination")).termination.job_id == assignment.job.id
    await worker.job_status(assignment.job.id, agent.JS_SUCCESS)
    job = await loopback_server.wait_for_job(ROOM, status="success", timeout=WAIT)
    assert job.terminated == "room closed"
    assert loopback_server.workers[0].jobs == ()
    assert loopback_server.dispatches(ROOM) == ()


async def test_a_refusal_moves_on_to_the_next_worker_by_load(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    # The idle worker refuses; the nearly full one (weight 0.001 against 1) takes the jobs.
    refusing = await _registered(loopback_server, session)
    busy = ScriptedWorker(loopback_server, session)
    await busy.register()
    await refusing.load(0.0)
    await busy.load(0.999)
    await loopback_server.wait_for_worker(exclude={refusing.id}, timeout=WAIT)

    refused = 0

    async def refuse_all() -> None:
        nonlocal refused
        while True:
            request = await refusing.receive("availability")
            await refusing.answer(request.availability.job, available=False)
            refused += 1

    refuser = asyncio.create_task(refuse_all())
    try:
        for n in range(3):
            await loopback_server.connect(f"alice-{n}", f"{ROOM}-{n}")
            assignment = await busy.accept_next()
            assert assignment.job.room.name == f"{ROOM}-{n}"
    finally:
        refuser.cancel()
        await asyncio.gather(refuser, return_exceptions=True)
    assert refused >= 1  # the idle worker was asked first at least once (p = 1 - 1e-9)
    assert {job.worker_id for job in loopback_server.jobs} == {busy.id}


async def test_full_workers_and_named_workers_get_no_automatic_dispatch(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    full = await _registered(loopback_server, session)
    await full.load(1.0, agent.WS_FULL)
    named = ScriptedWorker(loopback_server, session)
    await named.register("named")
    await loopback_server.wait_for_worker("named", timeout=WAIT)
    await loopback_server.wait_until(
        lambda: loopback_server.workers[0].status == "full", timeout=WAIT
    )

    await loopback_server.connect("alice", ROOM)
    (default,) = loopback_server.dispatches(ROOM)
    assert default.agent_name == ""
    # Nobody takes it: the dispatch stays without a job (no queue, no retry).
    view = loopback_server.dispatch(ROOM, "named", metadata="explicit")
    assignment = await named.accept_next()
    assert assignment.job.dispatch_id == view.id and assignment.job.metadata == "explicit"
    assert [d.jobs for d in loopback_server.dispatches(ROOM)] == [(), (assignment.job.id,)]


async def test_the_creating_tokens_room_configuration_names_the_agents(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    default = await _registered(loopback_server, session)
    named = ScriptedWorker(loopback_server, session)
    await named.register("named")
    await loopback_server.wait_for_worker("named", timeout=WAIT)
    config = RoomConfiguration(
        agents=[RoomAgentDispatch(agent_name="named", metadata="from-token")]
    )

    await loopback_server.connect("alice", ROOM, room_config=config)

    assignment = await named.accept_next()
    assert assignment.job.agent_name == "named" and assignment.job.metadata == "from-token"
    assert [d.agent_name for d in loopback_server.dispatches(ROOM)] == ["named"]
    # No default dispatch: the unnamed worker is not asked.
    assert default.ws is not None
    with pytest.raises(asyncio.TimeoutError):
        await default.ws.receive(timeout=0.3)


async def test_a_dropped_worker_registers_again_and_migrates_its_jobs(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    worker = await _registered(loopback_server, session)
    await loopback_server.connect("alice", ROOM)
    assignment = await worker.accept_next()
    old_id = worker.id

    loopback_server.drop_worker(old_id)
    assert worker.ws is not None
    closed = await worker.ws.receive(timeout=WAIT)
    assert closed.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    )
    await loopback_server.wait_until(lambda: not loopback_server.workers, timeout=WAIT)
    assert (await loopback_server.wait_for_job(ROOM, timeout=WAIT)).worker_id is None

    await worker.register()
    await worker.send(
        agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[assignment.job.id]))
    )
    assert (await loopback_server.wait_for_worker(exclude={old_id}, timeout=WAIT)).id == worker.id
    await loopback_server.wait_until(
        lambda: loopback_server.jobs[0].worker_id == worker.id, timeout=WAIT
    )

    # The new connection is the one that hears the termination.
    await loopback_server.close_room(ROOM)
    assert (await worker.receive("termination")).termination.job_id == assignment.job.id


async def test_deleting_a_dispatch_terminates_its_job(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    worker = await _registered(loopback_server, session)
    await loopback_server.connect("alice", ROOM)
    assignment = await worker.accept_next()
    loopback_server.delete_dispatch(ROOM, assignment.job.dispatch_id)
    assert (await worker.receive("termination")).termination.job_id == assignment.job.id
    assert loopback_server.dispatches(ROOM) == ()


async def test_the_agent_socket_needs_an_agent_grant_and_a_register(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    worker = ScriptedWorker(loopback_server, session)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await worker.connect(token=loopback_server.token("alice", ROOM))
    assert refused.value.status == 403

    ws = await worker.connect()
    await worker.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)))
    closed = await ws.receive(timeout=WAIT)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert loopback_server.workers == ()


# ---------------------------------------------------------------- Twirp AgentDispatchService


async def test_create_dispatch_on_a_missing_room_creates_it(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession, lkapi: api.LiveKitAPI
) -> None:
    named = ScriptedWorker(loopback_server, session)
    await named.register("named")
    await loopback_server.wait_for_worker("named", timeout=WAIT)

    created = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(
            agent_name="named", room=ROOM, metadata="from-api", attributes={"k": "v"}
        )
    )

    assert created.id.startswith("AD_") and created.room == ROOM and created.metadata == "from-api"
    assert loopback_server.rooms == (ROOM,)
    assignment = await named.accept_next()
    assert assignment.job.dispatch_id == created.id and dict(assignment.job.attributes) == {
        "k": "v"
    }
    listed = await lkapi.agent_dispatch.list_dispatch(ROOM)
    # The new room's default dispatch (no worker takes it here), then the named one.
    assert [d.agent_name for d in listed] == ["", "named"]
    assert [job.id for job in listed[1].state.jobs] == [assignment.job.id]

    deleted = await lkapi.agent_dispatch.delete_dispatch(created.id, ROOM)
    assert deleted.id == created.id and deleted.state.deleted_at > 0
    assert (await named.receive("termination")).termination.job_id == assignment.job.id
    assert [d.agent_name for d in await lkapi.agent_dispatch.list_dispatch(ROOM)] == [""]
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.agent_dispatch.delete_dispatch(created.id, ROOM)
    assert missing.value.code == "not_found" and missing.value.status == 404


async def test_twirp_speaks_json_and_needs_room_admin(
    loopback_server: LoopbackServer, session: aiohttp.ClientSession
) -> None:
    loopback_server.dispatch(ROOM, "named", metadata="m")
    url = loopback_server.url.replace("ws://", "http://")
    route = f"{url}/twirp/livekit.AgentDispatchService/ListDispatch"

    def bearer(**grants: object) -> dict[str, str]:
        token = (
            api.AccessToken(loopback_server.api_key, loopback_server.api_secret)
            .with_grants(api.VideoGrants(**grants))  # type: ignore[arg-type]
            .to_jwt()
        )
        return {"Authorization": f"Bearer {token}"}

    async with session.post(
        route, json={"room": ROOM}, headers=bearer(room_admin=True, room=ROOM)
    ) as answer:
        assert answer.status == 200 and answer.content_type == "application/json"
        body = await answer.json()
    assert [d["agent_name"] for d in body["agent_dispatches"]] == ["", "named"]

    async with session.post(
        route, json={"room": ROOM}, headers=bearer(room_admin=True, room="elsewhere")
    ) as answer:
        assert answer.status == 403
        assert (await answer.json())["code"] == "permission_denied"
    async with session.post(route, json={"room": ROOM}) as answer:
        assert answer.status == 401 and (await answer.json())["code"] == "unauthenticated"
    async with session.post(
        f"{url}/twirp/livekit.AgentDispatchService/Nope", json={}, headers=bearer(room_admin=True)
    ) as answer:
        assert answer.status == 404 and (await answer.json())["code"] == "bad_route"
