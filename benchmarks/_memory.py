"""Memory per tracked session, measured with tracemalloc.

Three rooms get the same ``connected`` + ``active`` events for ``n`` users:
one with our manager attached, one with the baseline, one with nothing. The
memory traced while feeding them (after a full collection) is what the room
holds afterwards; the empty room's figure is the SDK's own share
(``RemoteParticipant`` objects and their protobufs), which is subtracted.
What is left is what tracking costs: session objects, the history (one
transition per session here: connecting → active), indexes, locks.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from livekit import rtc

from . import _subjects
from ._rooms import lifecycles, real_room
from ._sizes import Sizes
from ._stats import Row, Target

FIGURE = "memory per session"


def _traced_after_feeding(n: int, attach: Callable[[rtc.Room], object] | None) -> int:
    script = lifecycles(n, prefix="mem")
    with real_room() as room:
        subject = None if attach is None else attach(room)
        feed = room._on_room_event
        gc.collect()
        tracemalloc.start()
        try:
            for visit in script:
                feed(visit.connect)
                feed(visit.activate)
            gc.collect()
            traced, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del subject
    return traced


async def measure(sizes: Sizes, run: int) -> list[Row]:
    n = sizes.memory_sessions
    sdk = _traced_after_feeding(n, None)
    mine = _traced_after_feeding(n, lambda room: _subjects.ours(room))
    base = _traced_after_feeding(n, lambda room: _subjects.baseline(room, removal_delay=30.0))
    return [
        Row(
            FIGURE,
            f"bytes per active session at {n:,} sessions",
            "B",
            "lower",
            Target(1_500, "lower", "≤ 1,500 B"),
            note="tracemalloc; history included; the SDK's own participant objects subtracted",
            ours=[(mine - sdk) / n],
            baseline=[(base - sdk) / n],
        ),
    ]
