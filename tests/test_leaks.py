"""Leak check: many connect/disconnect/reconnect cycles through one manager leave memory flat.

One manager and one real ``rtc.Room`` (through ``RoomDriver``) on a virtual-time
loop run cycles of every kind of life a session can have: reconnect inside
the grace window then removal without grace, grace expiry, takeover by a new
connection of the same user, each with a published track and sync plus async
cleanup callbacks. After a warm-up the test takes three measurements, none of
them about time:

- a census of the objects a leak would strand (sessions, participants,
  publications, tasks, timer handles, transitions, queued inputs) must return
  exactly to its value after the warm-up;
- CPython's count of allocated memory blocks may not grow by more than a
  constant, whatever the number of cycles;
- ``tracemalloc`` over a window of cycles may not grow by more than a few
  bytes per cycle.

The measurement runs in a fresh interpreter: CPython's block count is the
whole process's, so in a test session it would also count what threads left
running by earlier tests (an SDK's, a browser driver's) allocate meanwhile.

The default is 10,000 cycles (~7 s here). The full run is opt-in because
100,000 cycles take about a minute::

    LIVEKIT_LIFECYCLE_LEAK_CYCLES=100000 pytest tests/test_leaks.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, Transition
from livekit_lifecycle._events import Input
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import run

CYCLES = int(os.environ.get("LIVEKIT_LIFECYCLE_LEAK_CYCLES", "10000"))
WARMUP = 500
WINDOW = 500
"""Cycles measured with tracemalloc on (it makes each cycle ~4x slower)."""
BLOCK_SLACK = 200
"""Allocated blocks the whole run may add: a constant, so a per-cycle leak cannot hide."""
WINDOW_BYTES = 8 * 1024
"""Bytes tracemalloc may see retained over WINDOW cycles (< 17 bytes per cycle)."""
GRACE = 30.0
REASON = rtc.DisconnectReason
CENSUS = (
    Session,
    Transition,
    Input,
    rtc.RemoteParticipant,
    rtc.RemoteTrackPublication,
    asyncio.Task,
    asyncio.TimerHandle,
    asyncio.Future,
)


def census() -> Counter[str]:
    """Live objects of the types a leak would strand, by type name (after a full collection)."""
    gc.collect()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        if isinstance(obj, CENSUS):
            counts[type(obj).__qualname__] += 1
    return counts


@dataclass
class Measurement:
    cycles: int
    census_before: Counter[str]
    census_after: Counter[str]
    blocks: int
    window_bytes: int


class Cycles:
    """Drives one manager through every kind of session life, one cycle at a time."""

    def __init__(self, driver: RoomDriver, manager: LifecycleManager) -> None:
        self.driver = driver
        self.manager = manager
        self.cleaned = 0

        async def async_cleanup(session: Session) -> None:
            await asyncio.sleep(0)

        def count(session: Session) -> None:
            self.cleaned += 1

        manager.add_cleanup(count)
        manager.add_cleanup(async_cleanup)

    async def run(self, number: int) -> None:
        d, m = self.driver, self.manager
        first, second = f"user#{number}", f"user#{number}-b"
        if number % 10 == 5:  # takeover: a second connection of the same user joins
            d.connect(first, active=True)
            d.connect(second, active=True)
            await m.idle()
            d.disconnect(first)  # the late leave of the old one: stale
            d.disconnect(second, REASON.PARTICIPANT_REMOVED)
        else:  # disconnect, reconnect inside the window, leave for good
            d.connect(first, active=True)
            d.publish_track(first)
            d.disconnect(first, REASON.CLIENT_INITIATED)
            await m.idle()
            d.connect(second, active=True)
            expire = number % 10 == 0
            d.disconnect(second, REASON.CLIENT_INITIATED if expire else REASON.PARTICIPANT_REMOVED)
            if expire:
                await m.idle()
                await asyncio.sleep(GRACE)  # virtual: the clock jumps to the expiry
        await m.idle()
        assert m.get("user") is None, m.get("user")


async def measure(cycles: int, *, leak: bool = False) -> Measurement:
    async with RoomDriver("leak-room") as driver:
        manager = LifecycleManager(
            LifecycleConfig(grace_period=GRACE, session_key=lambda p: p.identity.split("#")[0])
        )
        kept: list[Session] = []
        if leak:
            manager.on("removed", kept.append)  # the application bug the check must catch
        manager.attach(driver.room)
        runner = Cycles(driver, manager)
        for number in range(WARMUP):
            await runner.run(number)
        before = census()
        blocks = sys.getallocatedblocks()
        for number in range(WARMUP, cycles - WINDOW):
            await runner.run(number)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for number in range(cycles - WINDOW, cycles):
                await runner.run(number)
            gc.collect()
            window = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        after = census()
        grown = sys.getallocatedblocks() - blocks
        assert runner.cleaned == 2 * cycles  # two connections per cycle, each cleaned once
        assert (
            manager.sessions == {}
            and InternalView(manager).by_sid == {}
            and InternalView(manager).tasks == set()
        )
        assert driver.room.remote_participants == {}
        await manager.aclose()
        return Measurement(cycles, before, after, grown, window)


def measure_in_fresh_process(cycles: int, *, leak: bool = False) -> Measurement:
    """:func:`measure` in a new interpreter (see the module docstring), its result read back."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_leaks", str(cycles), "leak" if leak else "clean"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    fields["census_before"] = Counter(fields["census_before"])
    fields["census_after"] = Counter(fields["census_after"])
    return Measurement(**fields)


def test_connect_disconnect_reconnect_cycles_leave_memory_flat() -> None:
    result = measure_in_fresh_process(CYCLES)
    assert result.census_after == result.census_before, (
        result.census_before,
        result.census_after,
    )
    assert result.blocks < BLOCK_SLACK, f"{result.blocks} blocks retained over {CYCLES} cycles"
    assert result.window_bytes < WINDOW_BYTES, f"{result.window_bytes} bytes over {WINDOW}"


def test_the_leak_check_catches_a_leak() -> None:
    """The same measurement, with an application listener that keeps every removed session."""
    result = measure_in_fresh_process(WARMUP + WINDOW, leak=True)
    grown = result.census_after - result.census_before
    assert grown["Session"] == result.cycles - WARMUP  # one session per cycle, all kept
    assert result.blocks >= BLOCK_SLACK and result.window_bytes >= WINDOW_BYTES


if __name__ == "__main__":
    # python -m tests.test_leaks CYCLES clean|leak: one measurement, printed as JSON.
    measured = run(lambda: measure(int(sys.argv[1]), leak=sys.argv[2] == "leak"))
    fields = {f.name: getattr(measured, f.name) for f in dataclasses.fields(measured)}
    print(json.dumps(fields))
