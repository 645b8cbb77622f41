"""What observability costs: lifecycle throughput with metrics (or tracing) on vs off.

The same workload as the lifecycle throughput figure (connect → active →
disconnect → cleaned → grace → removed, six events per visit, fed through a
real room's SDK translation), once on a manager with nothing enabled, once
with Prometheus metrics enabled on a fresh registry, once with tracing
enabled (no tracer provider: the OpenTelemetry API's no-op spans, what an
application that never configured tracing gets). Same process, alternating
order. The ratio is "on" ÷ "off"; the issue's target is metrics ≤ 1.15x.

Shared, loaded machines make wall-clock pairs useless here (one run's
figures were seen to vary 5x for a ~10% effect), so each mode is timed in
CPU time of this process (``time.process_time``: the workload never waits
on anything but a 1 µs timer), in ``ROUNDS`` interleaved rounds per run. Other
processes' load only ever adds time (cache and core contention), so a run
reports each mode's fastest round; the table shows the median of the runs.
"""

from __future__ import annotations

import gc
import time
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest

from livekit_lifecycle.metrics import enable_metrics
from livekit_lifecycle.tracing import enable_tracing

from . import _subjects
from ._lifecycle import EVENTS_PER_LIFECYCLE, GRACE, _feed
from ._rooms import lifecycles, real_room
from ._sizes import Sizes
from ._stats import Row, Target

FIGURE = "observability overhead"
ROUNDS = 5
Mode = Literal["off", "metrics", "tracing"]


async def _time(sizes: Sizes, mode: Mode, visits: int | None = None) -> float:
    script = lifecycles(sizes.lifecycles if visits is None else visits)
    with real_room() as room:
        countdown = _subjects.Countdown(len(script))
        manager = _subjects.ours(room, countdown.tick, grace_period=GRACE)
        registry = CollectorRegistry()
        if mode == "metrics":
            enable_metrics(manager, registry)
        elif mode == "tracing":
            enable_tracing(manager)
        gc.collect()
        start = time.process_time()
        await _feed(room, script, sizes.chunk)
        await countdown.done
        elapsed = time.process_time() - start
        if mode == "metrics":
            # Not timed: a scrape happens on Prometheus' schedule, off the event path.
            assert b"livekit_lifecycle_transitions_total" in generate_latest(registry)
        await manager.aclose()
    return elapsed


async def measure(sizes: Sizes, run: int) -> list[Row]:
    visits = max(sizes.lifecycles // ROUNDS, 1)
    await _time(sizes, "off", visits)  # warm-up, untimed
    modes: list[Mode] = ["off", "metrics", "tracing"]
    rounds: dict[Mode, list[float]] = {mode: [] for mode in modes}
    for number in range(ROUNDS):
        shift = (run + number) % len(modes)  # who goes first rotates
        for mode in modes[shift:] + modes[:shift]:
            rounds[mode].append(await _time(sizes, mode, visits))
    events = visits * EVENTS_PER_LIFECYCLE
    elapsed = {mode: min(times) for mode, times in rounds.items()}
    off = elapsed["off"] / events
    return [
        Row(
            FIGURE,
            "cost per event, metrics on (baseline: off)",
            "s",
            "lower",
            Target(1.15, "lower", "≤ 1.15x metrics off"),
            target_on_ratio=True,
            note=f"CPU time, best of {ROUNDS} rounds of {visits:,} lifecycles per run",
            ours=[elapsed["metrics"] / events],
            baseline=[off],
        ),
        Row(
            FIGURE,
            "cost per event, tracing on (baseline: off)",
            "s",
            "lower",
            note="no tracer provider configured: the OpenTelemetry API's no-op spans",
            ours=[elapsed["tracing"] / events],
            baseline=[off],
        ),
    ]
