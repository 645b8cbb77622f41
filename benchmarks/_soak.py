"""Soak: many connect/disconnect cycles, memory after warm-up must stay flat.

``batch`` identities cycle together: each connects (already ACTIVE, with a
sid never used before), then disconnects; the batch waits until every
session went through cleanup and a 1 µs grace window and was removed, then
the same identities come back with new sids. Fresh sids matter: a leak
keyed by sid would hide behind reused ones.

Memory is the interpreter's own accounting, sampled after a full collection
at every tenth of the run: ``sys.getallocatedblocks()`` (live pymalloc
blocks: any leaked Python object shows up here) and the process RSS.
tracemalloc would slow a million cycles down several-fold; the per-session
figure uses it instead. Growth is last sample minus the sample taken after
the warm-up (the first tenth).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from array import array
from dataclasses import dataclass, field

from . import _subjects
from ._rooms import CLIENT_INITIATED, connected, disconnected, real_room
from ._sizes import Sizes
from ._stats import Row, Target

GRACE = 1e-6
FIGURE = "soak"
CHECKPOINTS = 10
SLACK = 100
"""Blocks allowed to come and go whatever the cycle count (caches, dict resizes)."""


@dataclass(slots=True)
class _Samples:
    # Preallocated arrays: appending ints to lists would itself allocate blocks.
    blocks: array[int] = field(default_factory=lambda: array("q", bytes(8 * (CHECKPOINTS + 1))))
    rss: array[int] = field(default_factory=lambda: array("q", bytes(8 * (CHECKPOINTS + 1))))
    taken: int = 0
    elapsed: float = 0.0

    def take(self) -> None:
        gc.collect()
        self.blocks[self.taken] = sys.getallocatedblocks()
        self.rss[self.taken] = _rss()
        self.taken += 1

    def growth(self, series: array[int]) -> float:
        """Last sample minus the one taken after warm-up."""
        return float(series[self.taken - 1] - series[0])


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


async def _soak(cycles: int, batch: int, *, mine: bool) -> _Samples:
    batches = max(cycles // batch, CHECKPOINTS)
    every = max(batches // CHECKPOINTS, 1)
    identities = [f"soak{i}" for i in range(batch)]
    leaves = [disconnected(identity, CLIENT_INITIATED) for identity in identities]
    samples = _Samples()
    with real_room() as room:
        countdown = _subjects.Countdown(0)
        if mine:
            manager = _subjects.ours(room, countdown.tick, grace_period=GRACE)
        else:
            _subjects.baseline(room, countdown.tick, removal_delay=GRACE)
        feed = room._on_room_event
        start = time.perf_counter()
        for number in range(batches):
            joins = [
                connected(identity, f"PA_{number}_{i}", active=True)
                for i, identity in enumerate(identities)
            ]
            countdown.reset(batch)
            for event in joins:
                feed(event)
            del joins
            for event in leaves:
                feed(event)
            await countdown.done
            if (number + 1) % every == 0 or number == batches - 1:
                samples.take()
        samples.elapsed = time.perf_counter() - start
        if mine:
            assert not manager.sessions
            await manager.aclose()
    return samples


async def measure(sizes: Sizes, run: int) -> list[Row]:
    cycles, batch = sizes.soak_cycles, sizes.soak_batch
    mine = await _soak(cycles, batch, mine=True)
    base = await _soak(cycles, batch, mine=False)
    batches = max(cycles // batch, CHECKPOINTS)
    after_warmup = (batches - max(batches // CHECKPOINTS, 1)) * batch
    return [
        Row(
            FIGURE,
            f"allocated blocks growth after warm-up, {cycles:,} cycles",
            "blocks",
            "lower",
            Target(
                SLACK + after_warmup / 1_000,
                "lower",
                f"≤ {SLACK} + 1 per 1,000 cycles (flat)",
            ),
            note=(
                f"{batch:,} identities cycling; sys.getallocatedblocks() after gc;"
                f" {after_warmup:,} cycles after warm-up"
            ),
            ours=[mine.growth(mine.blocks)],
            baseline=[base.growth(base.blocks)],
        ),
        Row(
            FIGURE,
            "RSS growth after warm-up",
            "B",
            "lower",
            note="resident set size; allocator caching makes small moves meaningless",
            ours=[mine.growth(mine.rss)],
            baseline=[base.growth(base.rss)],
        ),
        Row(
            FIGURE,
            "connect/disconnect cycles per second",
            "cycles/s",
            "higher",
            note="including cleanup, grace timer and removal",
            ours=[cycles / mine.elapsed],
            baseline=[cycles / base.elapsed],
        ),
    ]
