"""The watchdog: a dead job's room is dispatched again, once, so a new job restores it.

LiveKit's open-source server never dispatches a job again when its worker or
job process dies. With a durable store every job process holds a short lease
and the rooms it writes name it; a room whose owner's lease expired while it
still holds sessions (unfinished ones, or cleanups still owed) belongs to a
dead job. The watchdog polls the store for such rooms, takes the room's
recovery claim in the store (set once per room and dead owner, so several
watchdogs dispatch it once), and creates an agent dispatch for the room
through livekit-api's ``AgentDispatchService``, with metadata saying it
resumes. The new job's manager restores the sessions (and the conversation)
as any manager attached to the room does. See ``docs/recovery.md``.

::

    async with Watchdog(store, url=url, api_key=key, api_secret=secret, agent_name="my-agent"):
        ...  # runs in the background until the block ends

or ``livekit-lifecycle watchdog --store redis://... --agent-name my-agent``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from .log import get_logger
from .stores import SessionRecord, process_owner

__all__ = [
    "RESUME_KEY",
    "DeadRoom",
    "Dispatcher",
    "OnDispatch",
    "RecoveryStore",
    "Watchdog",
    "livekit_dispatcher",
    "resume_info",
]

RESUME_KEY = "livekit_lifecycle"
"""The key of the dispatch metadata's JSON object a watchdog writes: ``{"livekit_lifecycle":
{"resume": true, "dead_owner": ..., "sessions": n, "watchdog": ...}}``."""

DEFAULT_INTERVAL = 1.0
"""Seconds between two polls of the store at most. A watchdog also wakes as the next lease
expires (when its store says when), so the interval does not add to the recovery time as
long as it is under two thirds of the lease TTL (the least time from a death to its lease's
expiry, leases being refreshed every third of their TTL)."""
_BACKOFF_MAX = 10.0
_EXPIRY_SLACK = 0.02
_CLOSE_TIMEOUT = 5.0
"""How long aclose() waits for the polling task once cancelled (see aclose)."""
"""Seconds after a lease's expiry the watchdog polls: the lease is then surely expired."""


class _RoomInfo(Protocol):
    @property
    def room(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def records(self) -> tuple[SessionRecord, ...]: ...


class RecoveryStore(Protocol):
    """What a watchdog needs of a store (:class:`~livekit_lifecycle.stores.RedisStore` has it)."""

    async def dead_rooms(self) -> Sequence[_RoomInfo]:
        """Rooms whose owner's lease expired and that still hold sessions."""
        ...

    async def claim_recovery(self, room: str, dead_lease: str, claimant: str) -> bool:
        """Set once per ``(room, dead_lease)``: True for the first claimant (and it again)."""
        ...

    # Optional: ``async def next_lease_expiry(self) -> float | None``, when the next live
    # lease expires (wall-clock s). Without it the watchdog polls every interval only.


class DeadRoom(NamedTuple):
    """A room whose job died, as a watchdog dispatched it."""

    room: str
    dead_owner: str
    """The lease id of the process that held the room."""
    sessions: int
    """Sessions stored for the room (unfinished, or with a cleanup still owed)."""
    metadata: str
    """The dispatch metadata (JSON, see :data:`RESUME_KEY`)."""
    dispatch_id: str = ""
    """The dispatch's id as the server gave it (``AD_...``); ``""`` when the dispatcher
    returned none."""


Dispatcher = Callable[[str, str], Awaitable["str | None"]]
"""``dispatch(room, metadata)``: create the agent dispatch for ``room`` and return its id
(``None`` when there is none to tell); raise on failure."""

OnDispatch = Callable[[DeadRoom], None]
"""``on_dispatch(dead_room)``: told of each dispatch a watchdog made, right after it."""


def livekit_dispatcher(
    *,
    url: str | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    agent_name: str = "",
) -> tuple[Dispatcher, Callable[[], Awaitable[None]]]:
    """A :data:`Dispatcher` through livekit-api's ``AgentDispatchService``, and its ``aclose``.

    ``url``, ``api_key`` and ``api_secret`` default to ``LIVEKIT_URL``,
    ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET``, like the LiveKit CLIs.
    ``agent_name`` is the worker's ``agent_name`` (``""``: workers of automatic
    dispatch).
    """
    from livekit import api

    lkapi = api.LiveKitAPI(
        url=url or os.environ.get("LIVEKIT_URL"),
        api_key=api_key or os.environ.get("LIVEKIT_API_KEY"),
        api_secret=api_secret or os.environ.get("LIVEKIT_API_SECRET"),
    )

    async def dispatch(room: str, metadata: str) -> str:
        created = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
        )
        return str(created.id)

    return dispatch, lkapi.aclose


def resume_info(metadata: str | None) -> dict[str, Any] | None:
    """The watchdog's part of a job's metadata (``ctx.job.metadata``), or ``None``.

    A job can tell it was dispatched to resume a dead job's room (and whose)::

        info = resume_info(ctx.job.metadata)
        if info is not None:
            logger.info("resuming", dead_owner=info["dead_owner"])
    """
    if not metadata:
        return None
    try:
        parsed = json.loads(metadata)
    except ValueError:
        return None
    info = parsed.get(RESUME_KEY) if isinstance(parsed, dict) else None
    return info if isinstance(info, dict) and info.get("resume") is True else None


class Watchdog:
    """Polls a store for dead jobs' rooms and dispatches each once (see the module doc).

    Run as many as you like (one per worker, or replicas of a sidecar): the
    store's recovery claim makes one of them dispatch a dead job's room, once.
    A store that is unreachable dispatches nothing (no claim, no dispatch);
    polling goes on with a backoff and recovery resumes when it answers. A
    dispatch that fails is retried at the next poll by the watchdog holding
    the claim.

    Args:
        store: A durable store with leases (:class:`~livekit_lifecycle.stores.RedisStore`).
        dispatch: How to dispatch; default :func:`livekit_dispatcher` built
            from ``url``, ``api_key``, ``api_secret`` and ``agent_name``.
        interval: Seconds between polls.
        name: This watchdog in claims and logs (default ``host:pid:nonce``).
        on_dispatch: Told of each dispatch made (a :class:`DeadRoom` with the
            dispatch's id), after the ``watchdog.dispatched`` log line; the
            ``livekit-lifecycle watchdog`` command prints a line with it. An
            exception it raises is logged (``watchdog.on_dispatch_failed``).
    """

    def __init__(
        self,
        store: RecoveryStore,
        *,
        url: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        agent_name: str = "",
        dispatch: Dispatcher | None = None,
        interval: float = DEFAULT_INTERVAL,
        name: str | None = None,
        on_dispatch: OnDispatch | None = None,
    ) -> None:
        if not callable(getattr(store, "dead_rooms", None)) or not callable(
            getattr(store, "claim_recovery", None)
        ):
            raise TypeError(
                f"store must be a durable store with leases (RedisStore), got {store!r}"
            )
        if (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or not (0 < interval <= 3600)
        ):
            raise ValueError(f"interval must be within (0, 3600] seconds, got {interval!r}")
        self._store = store
        self._close_dispatcher: Callable[[], Awaitable[None]] | None = None
        if dispatch is None:
            dispatch, self._close_dispatcher = livekit_dispatcher(
                url=url, api_key=api_key, api_secret=api_secret, agent_name=agent_name
            )
        self._dispatch = dispatch
        self._on_dispatch = on_dispatch
        self._interval = float(interval)
        self.name = name or process_owner()
        self._dispatched: set[tuple[str, str]] = set()
        self._unavailable = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._log = get_logger()
        self.stats: dict[str, int] = {
            "polls": 0,
            "dead_rooms_seen": 0,
            "dispatched": 0,
            "claimed_elsewhere": 0,
            "dispatch_failures": 0,
            "store_errors": 0,
        }
        """Counters since the watchdog was created."""

    async def poll(self) -> list[DeadRoom]:
        """One pass: every dead room this watchdog wins is dispatched. Returns those dispatched.

        Never raises for a store or dispatch failure (logged, counted, retried next pass).
        """
        self.stats["polls"] += 1
        try:
            dead = list(await self._store.dead_rooms())
        except Exception as exc:
            self._store_failed("dead_rooms", exc)
            return []
        self._store_back()
        seen = {(info.room, info.owner) for info in dead}
        self._dispatched &= seen  # a room recovered (or expired) is forgotten
        done: list[DeadRoom] = []
        for info in dead:
            if (info.room, info.owner) in self._dispatched:
                continue  # dispatched; the new job has not written the room yet
            self.stats["dead_rooms_seen"] += 1
            try:
                won = await self._store.claim_recovery(info.room, info.owner, self.name)
            except Exception as exc:
                self._store_failed("claim_recovery", exc)
                return done
            if not won:
                self.stats["claimed_elsewhere"] += 1
                self._dispatched.add((info.room, info.owner))
                self._log.debug(
                    "watchdog.claimed_elsewhere",
                    category="recovery",
                    room=info.room,
                    dead_owner=info.owner,
                )
                continue
            dead_room = self._describe(info)
            try:
                dispatch_id = await self._dispatch(info.room, dead_room.metadata)
            except Exception as exc:
                self.stats["dispatch_failures"] += 1
                self._log.warning(
                    "watchdog.dispatch_failed",
                    category="recovery",
                    room=info.room,
                    dead_owner=info.owner,
                    error=f"{type(exc).__name__}: {exc}",
                    hint="retried at the next poll (this watchdog holds the room's claim)",
                )
                continue
            self._dispatched.add((info.room, info.owner))
            self.stats["dispatched"] += 1
            # A dispatcher written before it returned the id may return anything.
            if isinstance(dispatch_id, str) and dispatch_id:
                dead_room = dead_room._replace(dispatch_id=dispatch_id)
            self._log.info(
                "watchdog.dispatched",
                category="recovery",
                room=info.room,
                dead_owner=info.owner,
                sessions=dead_room.sessions,
                dispatch_id=dead_room.dispatch_id,
                watchdog=self.name,
            )
            self._told(dead_room)
            done.append(dead_room)
        return done

    def _told(self, dead_room: DeadRoom) -> None:
        if self._on_dispatch is None:
            return
        try:
            self._on_dispatch(dead_room)
        except Exception:
            self._log.error(
                "watchdog.on_dispatch_failed",
                category="recovery",
                room=dead_room.room,
                exc_info=True,
            )

    def _describe(self, info: _RoomInfo) -> DeadRoom:
        sessions = len(info.records)
        metadata = json.dumps(
            {
                RESUME_KEY: {
                    "resume": True,
                    "dead_owner": info.owner,
                    "sessions": sessions,
                    "watchdog": self.name,
                }
            },
            separators=(",", ":"),
        )
        return DeadRoom(info.room, info.owner, sessions, metadata)

    def _store_failed(self, operation: str, exc: Exception) -> None:
        self.stats["store_errors"] += 1
        if not self._unavailable:
            self._unavailable = True
            self._log.warning(
                "watchdog.store_unavailable",
                category="recovery",
                operation=operation,
                error=f"{type(exc).__name__}: {exc}",
                hint="nothing is dispatched until the store answers",
            )

    def _store_back(self) -> None:
        if self._unavailable:
            self._unavailable = False
            self._log.info("watchdog.store_available", category="recovery")

    async def run(self) -> None:
        """Poll until cancelled: every ``interval`` s and as the next lease expires, with a
        backoff while the store is down."""
        self._log.info(
            "watchdog.started", category="recovery", watchdog=self.name, interval=self._interval
        )
        delay = self._interval
        while not self._stopping:
            await self.poll()
            if self._unavailable:
                delay = min(delay * 2, max(_BACKOFF_MAX, self._interval))
            else:
                delay = self._interval
            # Jitter: replicas started together do not poll in lockstep.
            wait = delay * random.uniform(0.9, 1.1)
            if not self._unavailable:
                wait = min(wait, await self._until_next_expiry())
            await asyncio.sleep(wait)

    async def _until_next_expiry(self) -> float:
        """Seconds until just after the next lease expires (``inf``: unknown, or none)."""
        next_expiry = getattr(self._store, "next_lease_expiry", None)
        if next_expiry is None:
            return math.inf
        try:
            expiry = await next_expiry()
        except Exception as exc:
            self._store_failed("next_lease_expiry", exc)
            return math.inf
        if expiry is None:
            return math.inf
        return max(float(expiry) - time.time(), 0.0) + _EXPIRY_SLACK

    def start(self) -> None:
        """Run :meth:`run` in the background (in a worker process, say) until :meth:`aclose`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="livekit-lifecycle:watchdog"
            )

    async def aclose(self) -> None:
        """Stop polling and close the default dispatcher's HTTP session. The store is yours."""
        task, self._task = self._task, None
        if task is not None:
            # A flag as well as the cancel, and a bounded wait: redis-py may turn the
            # cancellation of a command in flight into its own error, which poll()
            # takes for an outage and goes on; the flag ends the loop at its next turn.
            self._stopping = True
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
            if task not in done:
                self._log.warning("watchdog.stop_timeout", category="recovery", watchdog=self.name)
            elif not task.cancelled() and (error := task.exception()) is not None:
                raise error  # what ended the polling, as awaiting the task would
        close, self._close_dispatcher = self._close_dispatcher, None
        if close is not None:
            await close()

    async def __aenter__(self) -> Watchdog:
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
