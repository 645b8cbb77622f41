"""The :class:`SessionStore` protocol every store implements, and its small value types."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._record import SessionRecord, SkippedRecord

__all__ = ["Claim", "SessionStore", "StoreWrite", "log_skipped", "process_owner"]


class StoreWrite(NamedTuple):
    """One entry of a :meth:`SessionStore.write` batch: ``record`` ``None`` deletes ``key``."""

    room: str
    key: str
    record: SessionRecord | None
    ttl: float
    """Seconds the record lives unless written again (ignored for a delete)."""


class Claim(NamedTuple):
    """The answer to :meth:`SessionStore.claim`."""

    won: bool
    """True when the caller owns the cleanup of that connection (it must run it)."""
    owner: str
    """The process that owns it (the caller when ``won``)."""
    token: int
    """Fencing token: increases with every claim made in the store, never reused."""


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

        The first caller wins and keeps winning; every other owner loses,
        in any process, for as long as the store keeps claims.
        """
        ...

    def scan(
        self, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> AsyncIterator[SessionRecord]:
        """Every record of every room in the store (the fleet view).

        ``skipped`` as in :meth:`load`.
        """
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
