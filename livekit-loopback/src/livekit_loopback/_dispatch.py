"""Agent dispatch: registered workers, the dispatches of each room, and the jobs they run.

It follows livekit-server's agent service (``pkg/agent``, ``pkg/rtc/room.go``):

* a worker registers over ``/agent`` under a key (agent name, namespace,
  job type, deployment) and reports its status and load;
* a new room gets one dispatch per agent of the creating token's
  ``RoomConfiguration.agents``, or one default dispatch (agent name ``""``);
  ``CreateDispatch`` adds one to a room at any time;
* each dispatch becomes one ``JT_ROOM`` job: a worker of its key is chosen at
  random weighted by ``1 - load`` among the available ones, offered the job
  (``AvailabilityRequest``) and, if it accepts, sent a ``JobAssignment`` with
  a token for the agent participant it named; a refusal, a timeout or a
  closed socket moves on to the next worker; with none left the job is
  dropped (no queue, no retry, as in livekit-server);
* a job is terminated (``JobTermination``) when its agent leaves the room,
  when the room is deleted and when its dispatch is deleted.

Unlike livekit-server, ``migrate_job`` from a worker that registered again
moves those jobs to its new connection, so they can still be terminated.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit.protocol import agent, agent_dispatch, models
from livekit.protocol.agent_dispatch import RoomAgentDispatch

from ._log import get_logger
from ._room import Room
from ._tokens import TokenAuthority

__all__ = ["AgentDispatcher", "Dispatch", "Job", "Worker", "WorkerLink"]

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]
_SERVER_VERSION = "1.9.0"
_PROTOCOL = 16
_AGENT_PROTOCOL = 1
_ENDED = frozenset({agent.JS_SUCCESS, agent.JS_FAILED})
# Go adds this attribute to every agent token (livekit/protocol agent/token.go).
_AGENT_NAME_ATTRIBUTE = "lk.agent_name"


class WorkerLink(Protocol):
    """A worker's ``/agent`` WebSocket, seen from the dispatcher."""

    @property
    def closed(self) -> bool: ...

    def send(self, message: agent.ServerMessage) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


def _now_ns() -> int:
    return time.time_ns()


@dataclass(eq=False)
class Worker:
    """One registration of one worker process (registering again makes a new one)."""

    id: str
    agent_name: str
    namespace: str
    job_type: int
    deployment: str
    version: str
    permissions: models.ParticipantPermission
    link: WorkerLink
    status: int = agent.WS_AVAILABLE
    load: float = 0.0
    job_count: int = 0
    registered_at: float = field(default_factory=time.time)
    jobs: dict[str, Job] = field(default_factory=dict)
    # Job id -> the answer to an AvailabilityRequest (None: the worker went away).
    offers: dict[str, asyncio.Future[agent.AvailabilityResponse | None]] = field(
        default_factory=dict
    )
    connected: bool = True

    def serves(self, dispatch: Dispatch) -> bool:
        return (
            self.connected
            and self.job_type == agent.JT_ROOM
            and self.agent_name == dispatch.agent_name
            and self.deployment == dispatch.deployment
        )


@dataclass(eq=False)
class Dispatch:
    """One agent asked for in one room: by its token, by ``CreateDispatch``, or the default."""

    id: str
    room: str
    agent_name: str
    metadata: str
    attributes: Mapping[str, str]
    deployment: str = ""
    created_at: float = field(default_factory=time.time)
    deleted_at: float | None = None
    jobs: list[Job] = field(default_factory=list)

    def info(self) -> agent_dispatch.AgentDispatch:
        return agent_dispatch.AgentDispatch(
            id=self.id,
            agent_name=self.agent_name,
            room=self.room,
            metadata=self.metadata,
            deployment=self.deployment,
            attributes=dict(self.attributes),
            state=agent_dispatch.AgentDispatchState(
                jobs=[job.info for job in self.jobs],
                created_at=int(self.created_at * 1e9),
                deleted_at=0 if self.deleted_at is None else int(self.deleted_at * 1e9),
            ),
        )


@dataclass(eq=False)
class Job:
    """One job: a dispatch given to a worker (``info`` is what the worker was sent)."""

    info: agent.Job
    dispatch: Dispatch
    worker: Worker | None = None
    terminated: str | None = None
    """Why the server terminated it, once it did."""

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def room(self) -> str:
        return self.info.room.name

    @property
    def ended(self) -> bool:
        return self.info.state.status in _ENDED


class AgentDispatcher:
    """The agent side of one server: workers, dispatches and jobs, and every change to them."""

    def __init__(
        self,
        auth: TokenAuthority,
        rooms: Mapping[str, Room],
        spawn: Spawn,
        notify: Callable[[], None],
        *,
        availability_timeout: float = 10.0,
    ) -> None:
        self._auth = auth
        self._rooms = rooms
        self._spawn = spawn
        self._notify = notify
        self._availability_timeout = availability_timeout
        self.workers: dict[str, Worker] = {}
        self.jobs: dict[str, Job] = {}
        self.dispatches: dict[str, list[Dispatch]] = {}
        self._random = random.Random()
        self._log = get_logger()

    # ------------------------------------------------------------------ workers

    def register(self, link: WorkerLink, request: agent.RegisterWorkerRequest) -> Worker:
        """A worker's ``register``: record it and answer (the first frame it gets)."""
        worker = Worker(
            id=_id("AW_"),
            agent_name=request.agent_name,
            namespace=request.namespace,
            job_type=request.type,
            deployment=request.deployment,
            version=request.version,
            permissions=request.allowed_permissions,
            link=link,
        )
        self.workers[worker.id] = worker
        link.send(
            agent.ServerMessage(
                register=agent.RegisterWorkerResponse(
                    worker_id=worker.id,
                    server_info=models.ServerInfo(
                        edition=models.ServerInfo.Standard,
                        version=_SERVER_VERSION,
                        protocol=_PROTOCOL,
                        agent_protocol=_AGENT_PROTOCOL,
                        node_id="loopback",
                    ),
                )
            )
        )
        self._log.info(
            "agent.worker_registered",
            worker_id=worker.id,
            agent_name=worker.agent_name,
            job_type=agent.JobType.Name(worker.job_type),
            version=worker.version,
        )
        self._notify()
        return worker

    def handle(self, worker: Worker, message: agent.WorkerMessage) -> None:
        """Act on one message from a registered worker."""
        kind = message.WhichOneof("message")
        if kind == "availability":
            offer = worker.offers.pop(message.availability.job_id, None)
            if offer is not None and not offer.done():
                offer.set_result(message.availability)
        elif kind == "update_worker":
            update = message.update_worker
            if update.HasField("status"):
                worker.status = update.status
            worker.load = update.load
            worker.job_count = update.job_count
            self._notify()
        elif kind == "update_job":
            self._update_job(worker, message.update_job)
        elif kind == "migrate_job":
            self._migrate(worker, message.migrate_job.job_ids)
        elif kind == "ping":
            worker.link.send(
                agent.ServerMessage(
                    pong=agent.WorkerPong(
                        last_timestamp=message.ping.timestamp, timestamp=int(time.time() * 1000)
                    )
                )
            )
        else:
            self._log.info("agent.message_ignored", worker_id=worker.id, message=kind)

    def worker_lost(self, worker: Worker) -> None:
        """The worker's socket closed: forget it; its running jobs wait for a ``migrate_job``."""
        if not worker.connected:
            return
        worker.connected = False
        self.workers.pop(worker.id, None)
        for offer in worker.offers.values():
            if not offer.done():
                offer.set_result(None)
        worker.offers.clear()
        for job in worker.jobs.values():
            job.worker = None
        self._log.info(
            "agent.worker_lost", worker_id=worker.id, running_jobs=sorted(worker.jobs) or None
        )
        self._notify()

    def _update_job(self, worker: Worker, update: agent.UpdateJobStatus) -> None:
        job = self.jobs.get(update.job_id)
        if job is None or job.ended:
            # An ended job stays as it ended (failed at once when its agent left, as in Go).
            self._log.info(
                "agent.job_update_ignored",
                worker_id=worker.id,
                job_id=update.job_id,
                why="unknown job" if job is None else "ended",
            )
            return
        state = job.info.state
        state.status = update.status
        state.error = update.error
        state.updated_at = _now_ns()
        if job.ended:
            state.ended_at = state.updated_at
            if job.worker is not None:
                job.worker.jobs.pop(job.id, None)
        self._log.info(
            "agent.job_status",
            job_id=job.id,
            room=job.room,
            worker_id=worker.id,
            status=agent.JobStatus.Name(update.status),
            error=update.error or None,
        )
        self._notify()

    def _migrate(self, worker: Worker, job_ids: Iterable[str]) -> None:
        """A worker that registered again still runs these jobs: they are its own now."""
        moved = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.ended:
                continue
            if job.worker is not None and job.worker is not worker:
                job.worker.jobs.pop(job_id, None)
            job.worker = worker
            job.info.state.worker_id = worker.id
            worker.jobs[job_id] = job
            moved.append(job_id)
        self._log.info("agent.jobs_migrated", worker_id=worker.id, jobs=moved)
        self._notify()

    # ------------------------------------------------------------------ dispatches

    def room_created(self, room: Room, agents: Iterable[RoomAgentDispatch] | None) -> None:
        """A new room: its token's ``RoomConfiguration.agents``, or the default dispatch."""
        wanted = list(agents or [])
        if not wanted:
            self.create_dispatch(room, "")
        for entry in wanted:
            self.create_dispatch(
                room,
                entry.agent_name,
                metadata=entry.metadata,
                attributes=dict(entry.attributes),
                deployment=entry.deployment,
            )

    def create_dispatch(
        self,
        room: Room,
        agent_name: str,
        *,
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        deployment: str = "",
    ) -> Dispatch:
        """Ask for ``agent_name`` in ``room``: its job is offered to workers at once."""
        dispatch = Dispatch(
            id=_id("AD_"),
            room=room.name,
            agent_name=agent_name,
            metadata=metadata,
            attributes=dict(attributes or {}),
            deployment=deployment,
        )
        self.dispatches.setdefault(room.name, []).append(dispatch)
        self._log.info(
            "agent.dispatch_created",
            room=room.name,
            dispatch_id=dispatch.id,
            agent_name=agent_name,
        )
        self._spawn(self._launch(room, dispatch), f"loopback-agent-dispatch:{dispatch.id}")
        self._notify()
        return dispatch

    def delete_dispatch(self, room: str, dispatch_id: str) -> Dispatch:
        """Forget a dispatch and terminate its jobs.

        Raises:
            LookupError: when ``room`` has no such dispatch.
        """
        found = self.find_dispatch(room, dispatch_id)
        self.dispatches[room].remove(found)
        found.deleted_at = time.time()
        for job in found.jobs:
            self.terminate(job, "dispatch deleted", agent.JSR_DISPATCH_DELETED)
        self._log.info("agent.dispatch_deleted", room=room, dispatch_id=dispatch_id)
        self._notify()
        return found

    def find_dispatch(self, room: str, dispatch_id: str) -> Dispatch:
        """Raises ``LookupError`` when ``room`` has no dispatch ``dispatch_id``."""
        for dispatch in self.dispatches.get(room, ()):
            if dispatch.id == dispatch_id:
                return dispatch
        raise LookupError(f"no dispatch {dispatch_id!r} in room {room!r}")

    async def _launch(self, room: Room, dispatch: Dispatch) -> None:
        """Offer the dispatch's job to workers of its key until one takes it."""
        job = agent.Job(
            id=_id("AJ_"),
            dispatch_id=dispatch.id,
            type=agent.JT_ROOM,
            room=room.info(),
            agent_name=dispatch.agent_name,
            metadata=dispatch.metadata,
            deployment=dispatch.deployment,
            attributes=dict(dispatch.attributes),
            state=agent.JobState(status=agent.JS_PENDING, updated_at=_now_ns()),
        )
        tried: set[str] = set()
        while (worker := self._choose(dispatch, tried)) is not None:
            tried.add(worker.id)
            answer = await self._offer(worker, job)
            if self._rooms.get(room.name) is not room or dispatch.deleted_at is not None:
                self._log.info("agent.job_abandoned", job_id=job.id, room=room.name)
                return
            if answer is None or not answer.available or not worker.connected:
                self._log.info(
                    "agent.job_refused",
                    job_id=job.id,
                    room=room.name,
                    worker_id=worker.id,
                    answer="none" if answer is None else "unavailable",
                )
                continue
            self._assign(worker, dispatch, job, answer)
            return
        # Info, not a warning: most rooms of most tests have no worker at all.
        self._log.info(
            "agent.no_worker",
            room=room.name,
            dispatch_id=dispatch.id,
            agent_name=dispatch.agent_name,
            tried=sorted(tried) or None,
        )

    def _choose(self, dispatch: Dispatch, tried: set[str]) -> Worker | None:
        """An available worker for ``dispatch``, at random, weighted by ``1 - load``."""
        candidates = [
            w
            for w in self.workers.values()
            if w.id not in tried and w.status == agent.WS_AVAILABLE and w.serves(dispatch)
        ]
        if not candidates:
            return None
        weights = [max(1.0 - w.load, 1e-3) for w in candidates]
        return self._random.choices(candidates, weights)[0]

    async def _offer(self, worker: Worker, job: agent.Job) -> agent.AvailabilityResponse | None:
        offer: asyncio.Future[agent.AvailabilityResponse | None]
        offer = asyncio.get_running_loop().create_future()
        worker.offers[job.id] = offer
        worker.link.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
        try:
            return await asyncio.wait_for(offer, self._availability_timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            worker.offers.pop(job.id, None)

    def _assign(
        self,
        worker: Worker,
        dispatch: Dispatch,
        info: agent.Job,
        answer: agent.AvailabilityResponse,
    ) -> None:
        identity = answer.participant_identity or f"agent-{info.id}"
        now = _now_ns()
        info.state.CopyFrom(
            agent.JobState(
                status=agent.JS_RUNNING,
                started_at=now,
                updated_at=now,
                participant_identity=identity,
                worker_id=worker.id,
            )
        )
        allowed = worker.permissions
        token = self._auth.issue(
            identity,
            info.room.name,
            name=answer.participant_name or None,
            metadata=answer.participant_metadata or None,
            attributes={
                **answer.participant_attributes,
                _AGENT_NAME_ATTRIBUTE: worker.agent_name,
            },
            kind="agent",
            agent=True,
            can_publish=allowed.can_publish,
            can_subscribe=allowed.can_subscribe,
            can_publish_data=allowed.can_publish_data,
            can_update_own_metadata=allowed.can_update_metadata,
            hidden=allowed.hidden,
        )
        job = Job(info=info, dispatch=dispatch, worker=worker)
        self.jobs[job.id] = job
        worker.jobs[job.id] = job
        dispatch.jobs.append(job)
        # url "": the worker connects its job to the URL it registered with.
        worker.link.send(
            agent.ServerMessage(assignment=agent.JobAssignment(job=info, token=token, url=""))
        )
        self._log.info(
            "agent.job_assigned",
            job_id=job.id,
            room=job.room,
            worker_id=worker.id,
            agent_name=dispatch.agent_name,
            participant_identity=identity,
        )
        self._notify()

    # ------------------------------------------------------------------ termination

    def terminate(self, job: Job, why: str, reason: int = agent.JSR_UNSPECIFIED) -> bool:
        """Tell the job's worker to end it. ``False`` when it had ended or was terminated."""
        if job.ended or job.terminated is not None:
            return False
        job.terminated = why
        job.info.state.reason = reason  # type: ignore[assignment]
        worker = job.worker
        if worker is not None and worker.connected:
            worker.link.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job.id)))
        self._log.info(
            "agent.job_terminated",
            job_id=job.id,
            room=job.room,
            worker_id=None if worker is None else worker.id,
            why=why,
        )
        self._notify()
        return True

    def participant_left(self, room: str, identity: str) -> None:
        """An agent participant left: the job that sent it is over (Go: AGENT_LEFT_ROOM)."""
        for job in self._room_jobs(room):
            if job.info.state.participant_identity != identity or job.ended:
                continue
            if self.terminate(job, "agent left the room"):
                # As livekit-server: the job is failed at once, whatever the worker says next.
                job.info.state.status = agent.JS_FAILED
                job.info.state.error = "agent worker left the room"
                job.info.state.ended_at = _now_ns()
                if job.worker is not None:
                    job.worker.jobs.pop(job.id, None)

    def room_closed(self, room: str) -> None:
        """The room was deleted: its jobs end and its dispatches go."""
        for job in self._room_jobs(room):
            self.terminate(job, "room closed", agent.JSR_ROOM_CLOSED)
        for dispatch in self.dispatches.pop(room, []):
            dispatch.deleted_at = time.time()
        self._notify()

    def _room_jobs(self, room: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.room == room]

    def shutdown(self) -> list[WorkerLink]:
        """Forget every worker (the server is stopping); returns their links to close."""
        links = [worker.link for worker in self.workers.values()]
        for worker in list(self.workers.values()):
            self.worker_lost(worker)
        return links
