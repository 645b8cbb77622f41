"""The :class:`SessionStore` protocol every store implements, and its small value types."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from ._record import SessionRecord

__all__ = ["Claim", "SessionStore", "StoreWrite", "process_owner"]


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

    async def load(self, room: str) -> list[SessionRecord]:
        """Every record of ``room`` (unreadable ones are skipped)."""
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

    def scan(self) -> AsyncIterator[SessionRecord]:
        """Every record of every room in the store (the fleet view)."""
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
