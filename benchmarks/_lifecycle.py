"""Full-lifecycle throughput: connect → active → disconnect → cleaned → grace → removed.

Each visit is three room events (connected, active, disconnected) fed as
prebuilt ``RoomEvent`` protobufs through ``Room._on_room_event``, plus three
steps the subject takes by itself (cleanup done, grace armed, grace expired).
We count all six as events. The clock runs from the first room event to the
last removal, so cleanup tasks and grace timers are included. The grace
window is 1 µs for both subjects: long enough to go through a real loop
timer, short enough not to measure waiting.

Both subjects get the same events on a room of their own, so both pay the
SDK's translation (including ``EventEmitter.emit`` inspecting the handler's
signature on every emit). The SDK's cost alone is measured on a third room
with no handlers, and reported so it can be subtracted.
"""

from __future__ import annotations

import asyncio
import gc
import time

from livekit import rtc

from . import _subjects
from ._rooms import Lifecycle, lifecycles, real_room
from ._sizes import Sizes
from ._stats import Row, Target

EVENTS_PER_LIFECYCLE = 6
ROOM_EVENTS_PER_LIFECYCLE = 3
GRACE = 1e-6

FIGURE = "lifecycle throughput"


async def _feed(room: rtc.Room, script: list[Lifecycle], chunk: int) -> None:
    """Feed the visits ``chunk`` at a time, giving the loop a turn between chunks."""
    feed = room._on_room_event
    for start in range(0, len(script), chunk):
        batch = script[start : start + chunk]
        for visit in batch:
            feed(visit.connect)
            feed(visit.activate)
        for visit in batch:
            feed(visit.disconnect)
        await asyncio.sleep(0)


async def _time_ours(sizes: Sizes) -> float:
    script = lifecycles(sizes.lifecycles)
    with real_room() as room:
        countdown = _subjects.Countdown(len(script))
        manager = _subjects.ours(room, countdown.tick, grace_period=GRACE)
        gc.collect()
        start = time.perf_counter()
        await _feed(room, script, sizes.chunk)
        await countdown.done
        elapsed = time.perf_counter() - start
        await manager.aclose()
    return elapsed


async def _time_baseline(sizes: Sizes) -> float:
    script = lifecycles(sizes.lifecycles)
    with real_room() as room:
        countdown = _subjects.Countdown(len(script))
        _subjects.baseline(room, countdown.tick, removal_delay=GRACE)
        gc.collect()
        start = time.perf_counter()
        await _feed(room, script, sizes.chunk)
        await countdown.done
        elapsed = time.perf_counter() - start
    return elapsed


async def _time_sdk_alone(sizes: Sizes) -> float:
    script = lifecycles(sizes.lifecycles)
    with real_room() as room:
        gc.collect()
        start = time.perf_counter()
        await _feed(room, script, sizes.chunk)
        elapsed = time.perf_counter() - start
    return elapsed


async def measure(sizes: Sizes, run: int) -> list[Row]:
    # Alternate who goes first so that neither always inherits the other's heap.
    if run % 2:
        base = await _time_baseline(sizes)
        mine = await _time_ours(sizes)
    else:
        mine = await _time_ours(sizes)
        base = await _time_baseline(sizes)
    sdk = await _time_sdk_alone(sizes)
    events = sizes.lifecycles * EVENTS_PER_LIFECYCLE
    room_events = sizes.lifecycles * ROOM_EVENTS_PER_LIFECYCLE
    sdk_per_event = sdk / events
    return [
        Row(
            FIGURE,
            "events per second (6 per lifecycle, one core)",
            "events/s",
            "higher",
            Target(100_000, "higher", "≥ 100,000 events/s"),
            note=f"{sizes.lifecycles:,} lifecycles, fed {sizes.chunk} at a time",
            ours=[events / mine],
            baseline=[events / base],
        ),
        Row(
            FIGURE,
            "cost per event",
            "s",
            "lower",
            Target(10.0, "lower", "≤ 10x baseline"),
            target_on_ratio=True,
            note="SDK translation included for both subjects",
            ours=[mine / events],
            baseline=[base / events],
        ),
        Row(
            FIGURE,
            "cost per event, SDK translation subtracted",
            "s",
            "lower",
            note="what the handlers themselves cost",
            ours=[mine / events - sdk_per_event],
            baseline=[base / events - sdk_per_event],
        ),
        Row(
            FIGURE,
            "SDK translation alone, per room event (no handlers)",
            "s",
            "lower",
            note="Room._on_room_event with nothing listening; the same for both",
            ours=[sdk / room_events],
        ),
    ]
