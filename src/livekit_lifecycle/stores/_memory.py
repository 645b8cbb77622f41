""":class:`MemoryStore`: sessions kept in this process only (the default)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence

from livekit_lifecycle._numbers import require_seconds

from ._protocol import Claim, StoreWrite
from ._record import SessionRecord, SkippedRecord

__all__ = ["MemoryStore"]


class MemoryStore:
    """Records and claims in this process's memory; nothing survives it.

    The default store. It is not durable, so a manager using it does no
    store work at all: sessions live in the manager, as they always have,
    at the same speed. The methods work all the same (records expire by
    their TTL), which makes it the reference for what a store must do, and
    lets managers of one process share claims.
    """

    def __init__(self, *, ttl_margin: float = 60.0) -> None:
        self._ttl_margin = require_seconds("ttl_margin", ttl_margin, allow_zero=False)
        self._records: dict[tuple[str, str], tuple[SessionRecord, float]] = {}
        self._claims: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._tokens = itertools.count(1)
        self._changed: dict[str, float] = {}

    @property
    def durable(self) -> bool:
        return False

    @property
    def ttl_margin(self) -> float:
        return self._ttl_margin

    def _live(self) -> list[SessionRecord]:
        now = time.monotonic()
        expired = [k for k, (_, until) in self._records.items() if until <= now]
        for k in expired:
            del self._records[k]
        return [record for record, _ in self._records.values()]

    async def load(
        self, room: str, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> list[SessionRecord]:
        # Records are kept as objects, checked when written: none can be unreadable.
        return [record for record in self._live() if record.room == room]

    async def load_many(self, rooms: Sequence[str]) -> dict[str, list[SessionRecord]]:
        wanted = dict.fromkeys(rooms)
        result: dict[str, list[SessionRecord]] = {room: [] for room in wanted}
        for record in self._live():
            if record.room in wanted:
                result[record.room].append(record)
        return result

    async def rooms(self, since: float = 0.0) -> list[tuple[str, float]]:
        held = {record.room for record in self._live()}
        return sorted(
            (room, changed)
            for room, changed in self._changed.items()
            if room in held and changed >= since
        )

    async def write(self, batch: Sequence[StoreWrite]) -> None:
        now = time.monotonic()
        for entry in batch:
            self._changed[entry.room] = time.time()
            if entry.record is None:
                self._records.pop((entry.room, entry.key), None)
            else:
                entry.record.to_json()  # the same refusal as a real store's
                self._records[entry.room, entry.key] = (entry.record, now + entry.ttl)

    async def claim(self, room: str, key: str, sid: str, owner: str) -> Claim:
        held = self._claims.get((room, key, sid))
        if held is None:
            held = self._claims[room, key, sid] = (owner, next(self._tokens))
        return Claim(held[0] == owner, held[0], held[1])

    async def claim_many(
        self, room: str, owner: str, connections: Sequence[tuple[str, str]]
    ) -> list[Claim]:
        return [await self.claim(room, key, sid, owner) for key, sid in connections]

    async def scan(
        self, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> AsyncIterator[SessionRecord]:
        for record in self._live():
            yield record

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return "MemoryStore()"
