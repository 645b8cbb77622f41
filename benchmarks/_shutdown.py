"""Shutdown of many sessions whose cleanup each takes a while.

Every session's cleanup awaits ``asyncio.sleep(cleanup)``. Our manager
cleans sessions concurrently; the seed's ``graceful_shutdown`` awaits them
one after the other, so its time is ``sessions x cleanup``. The baseline is
therefore measured on a few sessions and scaled linearly to the same count
(the scaled figure is what the table shows; the note says how many were
measured).
"""

from __future__ import annotations

import asyncio
import gc
import time

from livekit_lifecycle import Session

from . import _subjects
from ._rooms import populate, real_room
from ._sizes import Sizes
from ._stats import Row, Target

FIGURE = "shutdown"


async def _ours(sessions: int, cleanup: float) -> float:
    async def slow_cleanup(session: Session) -> None:
        await asyncio.sleep(cleanup)

    with real_room() as room:
        populate(room, sessions)
        manager = _subjects.ours(room, cleanup=slow_cleanup)
        gc.collect()
        start = time.perf_counter()
        await manager.aclose()
        elapsed = time.perf_counter() - start
        assert not manager.sessions
    return elapsed


async def _baseline(sessions: int, cleanup: float) -> float:
    async def slow_clear_user(user_id: str | None) -> None:
        await asyncio.sleep(cleanup)

    with real_room() as room:
        populate(room, sessions)
        seed = _subjects.baseline(room, clear_user=slow_clear_user, removal_delay=30.0)
        gc.collect()
        start = time.perf_counter()
        await seed.graceful_shutdown()
        elapsed = time.perf_counter() - start
        assert not seed.active_sessions
    return elapsed


async def measure(sizes: Sizes, run: int) -> list[Row]:
    n, m, cleanup = (
        sizes.shutdown_sessions,
        sizes.shutdown_baseline_sessions,
        sizes.shutdown_cleanup,
    )
    mine = await _ours(n, cleanup)
    base = await _baseline(m, cleanup) * n / m
    return [
        Row(
            FIGURE,
            f"{n:,} sessions, each cleanup {cleanup * 1e3:g} ms",
            "s",
            "lower",
            Target(1.0, "lower", "≤ 1 s"),
            note=f"baseline measured on {m:,} sessions and scaled x{n / m:g} (it is sequential)",
            ours=[mine],
            baseline=[base],
        )
    ]
