"""Room size: attaching to a full room, and add/remove cost at growing room sizes.

*Attach*: the room already holds ``n`` ACTIVE participants (put there
through the SDK's translation, not timed); the clock measures ``attach``
(our reconcile creates a session per participant) against the baseline's
registration plus one connected-handler call per present participant (what
a seed user would write to adopt them).

*Add/remove*: with ``size`` participants already tracked, ``ops`` more join
(``participant_connected`` already ACTIVE), then leave with a reason that
skips the grace window (``PARTICIPANT_REMOVED``; the baseline's removal
delay is 0). Add is timed to the last state change, remove to the last
removal. Cost per operation must not grow with ``size``.
"""

from __future__ import annotations

import gc
import time

from . import _subjects
from ._rooms import PARTICIPANT_REMOVED, connected, disconnected, populate, real_room
from ._sizes import Sizes
from ._stats import Row, Target

FIGURE = "room size"


async def _attach_ours(n: int) -> float:
    with real_room() as room:
        populate(room, n)
        gc.collect()
        start = time.perf_counter()
        manager = _subjects.ours(room)
        elapsed = time.perf_counter() - start
        assert len(manager.sessions) == n
        # Nothing is pending (no cleanup, no timer): dropping it is enough,
        # and a shutdown of n sessions is a figure of its own.
        manager.detach()
    return elapsed


async def _attach_baseline(n: int) -> float:
    with real_room() as room:
        populate(room, n)
        gc.collect()
        start = time.perf_counter()
        seed = _subjects.baseline(room, removal_delay=30.0)
        elapsed = time.perf_counter() - start
        assert len(seed.active_sessions) == n
    return elapsed


async def _add_remove(size: int, ops: int, *, mine: bool) -> tuple[float, float]:
    joins = [connected(f"new{i}", f"PA_new{i}", active=True) for i in range(ops)]
    leaves = [disconnected(f"new{i}", PARTICIPANT_REMOVED) for i in range(ops)]
    with real_room() as room:
        populate(room, size)
        countdown = _subjects.Countdown(ops)
        if mine:
            manager = _subjects.ours(room, countdown.tick)
        else:
            _subjects.baseline(room, countdown.tick, removal_delay=0.0)
        feed = room._on_room_event
        gc.collect()
        start = time.perf_counter()
        for event in joins:
            feed(event)
        added = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        for event in leaves:
            feed(event)
        await countdown.done
        removed = time.perf_counter() - start
        if mine:
            assert not manager.sessions.keys() & {f"new{i}" for i in range(ops)}
            manager.detach()
    return added / ops, removed / ops


async def measure(sizes: Sizes, run: int) -> list[Row]:
    n = sizes.attach_room
    rows = [
        Row(
            FIGURE,
            f"attach to a room holding {n:,} participants",
            "s",
            "lower",
            Target(0.1, "lower", "≤ 100 ms"),
            note="baseline: register handlers + connected handler per present participant",
            ours=[await _attach_ours(n)],
            baseline=[await _attach_baseline(n)],
        )
    ]
    adds: dict[int, tuple[float, float]] = {}
    removes: dict[int, tuple[float, float]] = {}
    for size in sizes.scaling_rooms:
        mine = await _add_remove(size, sizes.scaling_ops, mine=True)
        base = await _add_remove(size, sizes.scaling_ops, mine=False)
        adds[size] = (mine[0], base[0])
        removes[size] = (mine[1], base[1])
    for label, table in (("add", adds), ("remove", removes)):
        for size, (mine_cost, base_cost) in table.items():
            rows.append(
                Row(
                    FIGURE,
                    f"{label} one participant, room of {size:,}",
                    "s",
                    "lower",
                    note=f"mean over {sizes.scaling_ops:,} {label}s",
                    ours=[mine_cost],
                    baseline=[base_cost],
                )
            )
        smallest, largest = min(table), max(table)
        rows.append(
            Row(
                FIGURE,
                f"{label} cost growth, room of {largest:,} ÷ room of {smallest:,}",
                "x",
                "lower",
                Target(1.5, "lower", "≤ 1.5x (flat)"),
                note="1.0 = independent of room size",
                ours=[table[largest][0] / table[smallest][0]],
                baseline=[table[largest][1] / table[smallest][1]],
            )
        )
    return rows
