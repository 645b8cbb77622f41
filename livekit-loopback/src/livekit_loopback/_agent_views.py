"""What a test sees of agent workers and jobs: frozen snapshots (see ``LoopbackServer.workers``)."""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import agent

from ._dispatch import Dispatch, Job, Worker

__all__ = ["DispatchView", "JobView", "WorkerView"]


def _status(status: int) -> str:
    """``JS_RUNNING`` -> ``"running"``."""
    return agent.JobStatus.Name(status)[3:].lower()


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One registered agent worker, at one moment.

    Attributes:
        id: The worker id the server gave it (``AW_...``); registering again makes a new one.
        agent_name: Its agent name (``""``: it gets the automatic dispatch of every new room).
        status: ``"available"`` or ``"full"``, as it last reported.
        load: The load it last reported (0 to 1).
        jobs: Ids of the jobs it runs now.
        version: The livekit-agents version it registered with.
    """

    id: str
    agent_name: str
    status: str
    load: float
    jobs: tuple[str, ...]
    version: str

    @classmethod
    def of(cls, worker: Worker) -> WorkerView:
        status = "available" if worker.status == agent.WS_AVAILABLE else "full"
        return cls(
            id=worker.id,
            agent_name=worker.agent_name,
            status=status,
            load=worker.load,
            jobs=tuple(worker.jobs),
            version=worker.version,
        )


@dataclass(frozen=True, slots=True)
class JobView:
    """One job given to a worker, at one moment.

    Attributes:
        id: The job id (``AJ_...``).
        room: The room it serves.
        agent_name: The agent name it was dispatched to.
        dispatch_id: The dispatch it came from (``AD_...``).
        status: ``"running"`` once assigned, then what the worker reports
            (``"success"``, ``"failed"``); ``"failed"`` at once when its agent
            leaves the room.
        worker_id: The worker running it (after a ``migrate_job``, the new one);
            ``None`` while its worker is disconnected.
        participant_identity: The identity its agent joins the room with.
        metadata: The dispatch's metadata (``ctx.job.metadata``).
        terminated: Why the server sent it a ``JobTermination`` (``"room closed"``,
            ``"agent left the room"``, ``"dispatch deleted"``), or ``None``.
        error: The error the worker (or the server) reported.
    """

    id: str
    room: str
    agent_name: str
    dispatch_id: str
    status: str
    worker_id: str | None
    participant_identity: str
    metadata: str
    terminated: str | None
    error: str

    @classmethod
    def of(cls, job: Job) -> JobView:
        info = job.info
        return cls(
            id=info.id,
            room=info.room.name,
            agent_name=info.agent_name,
            dispatch_id=info.dispatch_id,
            status=_status(info.state.status),
            worker_id=None if job.worker is None else job.worker.id,
            participant_identity=info.state.participant_identity,
            metadata=info.metadata,
            terminated=job.terminated,
            error=info.state.error,
        )


@dataclass(frozen=True, slots=True)
class DispatchView:
    """One dispatch (an agent asked for in a room).

    Attributes:
        id: The dispatch id (``AD_...``).
        room: Its room.
        agent_name: The agent name it asks for.
        metadata: Given to its jobs.
        jobs: Ids of the jobs made from it (none while no worker took it).
    """

    id: str
    room: str
    agent_name: str
    metadata: str
    jobs: tuple[str, ...]

    @classmethod
    def of(cls, dispatch: Dispatch) -> DispatchView:
        return cls(
            id=dispatch.id,
            room=dispatch.room,
            agent_name=dispatch.agent_name,
            metadata=dispatch.metadata,
            jobs=tuple(job.id for job in dispatch.jobs),
        )
