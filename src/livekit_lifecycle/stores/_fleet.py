"""The fleet view: every room's sessions in a store, across every process writing to it."""

from __future__ import annotations

import time
from typing import Any

from ._protocol import SessionStore

__all__ = ["fleet_snapshot"]


async def fleet_snapshot(store: SessionStore) -> dict[str, Any]:
    """Every record in ``store`` as plain JSON-ready data.

    Returns ``{"taken_at": t, "rooms": {room: {key: record}}}``, rooms and
    keys sorted, each record :meth:`SessionRecord.as_dict` plus
    ``grace_remaining`` (seconds left in the window, ``None`` outside
    ``grace``). :meth:`LifecycleManager.snapshot` stays the single-room,
    single-process view; this one is what the store holds, so it lags each
    manager by its write-behind (normally milliseconds).
    """
    now = time.time()
    rooms: dict[str, dict[str, dict[str, Any]]] = {}
    async for record in store.scan():
        entry = record.as_dict()
        deadline = record.grace_deadline
        entry["grace_remaining"] = None if deadline is None else round(max(deadline - now, 0), 3)
        rooms.setdefault(record.room, {})[record.key] = entry
    return {
        "taken_at": now,
        "rooms": {room: dict(sorted(rooms[room].items())) for room in sorted(rooms)},
    }
