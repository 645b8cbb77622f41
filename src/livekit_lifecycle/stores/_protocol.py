"""The :class:`SessionStore` protocol every store implements, and its small value types."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._record import SessionRecord, SkippedRecord

__all__ = ["Claim", "RoomInfo", "SessionStore", "StoreWrite", "log_skipped", "process_owner"]


class StoreWrite(NamedTuple):
    """One entry of a :meth:`SessionStore.write` batch: ``record`` ``None`` deletes ``key``."""

    room: str
    key: str
    record: SessionRecord | None
    ttl: float
    """Seconds the record must outlive its writer (a store keeps the records of a live
    writer regardless: :class:`RedisStore` keeps a room this long after its owner's
    last lease refresh). Ignored for a delete."""
    appended: int | None = None
    """How many entries at the end of ``record.history`` are new since this session's
    previous write to the store: a store may append them, then keep the last
    ``len(record.history)`` entries, instead of rewriting the history.
    ``None``: replace the whole history."""
    cleaned: tuple[str, ...] = ()
    """Sids of this key's connections whose cleanup ended (here or, for a claim lost,
    elsewhere) since the key's previous write, oldest first. A store that keeps claims
    marks those claims done (:class:`RedisStore`: a manager that lost a claim waits for
    the mark, or for the holder's lease to expire; a record alone may be overwritten
    by that manager's own older view). A store without claims ignores it."""


class Claim(NamedTuple):
    """The answer to :meth:`SessionStore.claim`."""

    won: bool
    """True when the caller owns the cleanup of that connection (it must run it)."""
    owner: str
    """The process that owns it (the caller when ``won``)."""
    token: int
    """Fencing token: increases with every claim of the room (a takeover's is higher
    than the claim it took over); compare tokens of one connection only."""
    retry: bool = False
    """True when this claim took over the claim of a process that died (its lease
    expired) before the cleanup was written as done: the callbacks may have run, in
    part, there. An idempotent callback dedupes with ``(sid, token)``."""
    lease: str = ""
    """The lease of the process holding the claim (``""`` for a store without leases)."""
    done: bool = False
    """For a claim held elsewhere: its cleanup is written as done (nothing to take over)."""


class RoomInfo(NamedTuple):
    """One room as a store sees it (:meth:`RedisStore.read_room`, :meth:`RedisStore.dead_rooms`)."""

    room: str
    owner: str
    """Lease id of the process that wrote the room last."""
    owner_alive: bool
    """Whether that lease is still refreshed."""
    changed_at: float
    """Wall-clock time of the room's last write."""
    records: tuple[SessionRecord, ...]


@runtime_checkable
class SessionStore(Protocol):
    """Where a :class:`~livekit_lifecycle.LifecycleManager` keeps its sessions.

    Every method is a coroutine except :attr:`durable`, and every one may
    raise (a network store may be unreachable): the manager treats a failing
    store as an outage and keeps working in memory.
    """

    @property
    def durable(self) -> bool:
        """Whether records outlive this process and are seen by other processes.

        ``False`` (:class:`MemoryStore`): the manager does no store work at all.
        """
        ...

    @property
    def ttl_margin(self) -> float:
        """Seconds records are kept beyond the grace window (see :func:`record_ttl`)."""
        ...

    async def load(
        self, room: str, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> list[SessionRecord]:
        """Every record of ``room`` that :func:`~livekit_lifecycle.stores.parse_record` accepts.

        A record that cannot be restored (corrupt, of another room or key,
        numbers out of range...) is never returned and never fails the load:
        it is passed to ``skipped``, or, without one, logged by the store
        (:func:`log_skipped`, one ``store.record_skipped`` line).
        """
        ...

    async def write(self, batch: Sequence[StoreWrite]) -> None:
        """Apply the upserts and deletes of ``batch``, in order, as one round trip."""
        ...

    async def claim(self, room: str, key: str, sid: str, owner: str) -> Claim:
        """Atomically take the cleanup of connection ``sid`` of session ``key``.

        The first caller wins and keeps winning; every other owner loses, in any
        process, for as long as the store keeps claims, unless the winner's
        process died (its lease expired) before the cleanup was written as done:
        then the next caller takes it over (``retry``, a higher ``token``).
        """
        ...

    async def claim_many(
        self, room: str, owner: str, connections: Sequence[tuple[str, str]]
    ) -> list[Claim]:
        """:meth:`claim` of each ``(key, sid)`` of ``room`` for ``owner``, answers in order.

        What a manager calls for the cleanups that became due together: a store
        claims them in as few round trips as it can (:class:`RedisStore`: one per
        500). Each answer is what :meth:`claim` of that connection would give.
        A manager attaching to ``room`` calls it once with no connections: a store
        may get ready for the claims to come (:class:`RedisStore`: its lease,
        scripts and connections, in the background); it must answer ``[]``.
        """
        ...

    def scan(
        self, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> AsyncIterator[SessionRecord]:
        """Every record of every room in the store (the fleet view).

        ``skipped`` as in :meth:`load`.
        """
        ...

    async def rooms(self, since: float = 0.0) -> list[tuple[str, float]]:
        """Rooms holding sessions, ``(room, last change)``, changed at or after ``since``."""
        ...

    async def load_many(self, rooms: Sequence[str]) -> dict[str, list[SessionRecord]]:
        """:meth:`load` of several rooms, in as few round trips as the store can."""
        ...

    async def ping(self) -> None:
        """Raise unless the store answers."""
        ...

    async def aclose(self) -> None:
        """Release connections. Records stay."""
        ...


def process_owner() -> str:
    """An owner name unique to this process and call: ``host:pid:nonce``.

    The nonce tells a restarted process with a recycled pid from the old one.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def log_skipped(log: Any, skip: SkippedRecord, **context: Any) -> None:
    """The one log line of a record that was read and not restored (``store.record_skipped``)."""
    log.warning(
        "store.record_skipped",
        category="store",
        redis_key=skip.where,
        key=skip.key,
        reason=skip.reason,
        **({"room": skip.room} | context),
    )
