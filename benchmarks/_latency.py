"""Latency from a ``RoomEvent`` protobuf entering the SDK to the subject's state change.

Each sample: take the time, hand one prebuilt ``RoomEvent`` to
``Room._on_room_event`` (the SDK translates it and emits the Python event),
then wait for the subject to report the state that event leads to; the
latency ends at the report (our ``created``/``state_changed`` notifications,
the baseline's ``on_change`` hook), not when the waiting coroutine wakes up.
Between samples the loop gets a turn, so timers and tasks run as they would.

*Event → state*: connect → connecting, active → active, disconnect →
disconnecting (all synchronous for both subjects).

*Head-of-line isolation*: one user's cleanup hangs (awaits an event that is
only set at the end) while other users come and go; their connect → connecting,
active → active and disconnect → **cleaned** (their own cleanup, through a
task) are timed for as long as the hang lasts. The hung session is checked to
still be cleaning when sampling stops.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from livekit import rtc

from livekit_lifecycle import Session, State, Transition

from . import _subjects
from ._rooms import activated, connected, disconnected, real_room
from ._sizes import Sizes
from ._stats import Row, Target, percentile

GRACE = 1e-6
STUCK = "stuck"


class _Probe:
    """Futures for expected (key, step) reports, resolved with the time of the report."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], asyncio.Future[float]] = {}

    def expect(self, key: str, step: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[key, step] = future
        return future

    def hit(self, key: str, step: str) -> None:
        now = time.perf_counter()
        future = self._waiting.pop((key, step), None)
        if future is not None:
            future.set_result(now)


def _probe_ours(room: rtc.Room, probe: _Probe, cleanup: Callable[[Session], Any]) -> Any:
    manager = _subjects.ours(room, cleanup=cleanup, grace_period=GRACE)
    manager.on("created", lambda session: probe.hit(session.key, "connecting"))

    def changed(session: Session, transition: Transition) -> None:
        probe.hit(session.key, transition.dest.value)

    manager.on("state_changed", changed)
    return manager


def _probe_baseline(room: rtc.Room, probe: _Probe, clear_user: Callable[[str | None], Any]) -> Any:
    seed = _subjects.baseline(room, clear_user=clear_user, removal_delay=GRACE)
    seed.on_change = lambda sid, step: probe.hit(sid, "connecting" if step == "connected" else step)
    return seed


async def _visit(
    room: rtc.Room, probe: _Probe, n: int, mine: bool, disconnect_to: str, out: list[float]
) -> None:
    """One user's connect, active and disconnect, each timed to the state it leads to."""
    identity = f"user{n}"
    key = identity if mine else f"PA_{identity}"
    steps = (
        (connected(identity, f"PA_{identity}"), "connecting"),
        (activated(identity), "active"),
        (disconnected(identity), disconnect_to),
    )
    feed = room._on_room_event
    for event, step in steps:
        reported = probe.expect(key, step)
        start = time.perf_counter()
        feed(event)
        out.append(await reported - start)
        await asyncio.sleep(0)


async def _event_to_state(samples: int, *, mine: bool) -> list[float]:
    latencies: list[float] = []
    probe = _Probe()
    with real_room() as room:
        subject = (
            _probe_ours(room, probe, _subjects.noop_cleanup)
            if mine
            else _probe_baseline(room, probe, _subjects.noop_clear_user)
        )
        gc.collect()
        for n in range(samples):
            await _visit(room, probe, n, mine, "disconnecting", latencies)
        if mine:
            await subject.aclose()
    return latencies


async def _head_of_line(hang: float, *, mine: bool) -> tuple[list[float], float]:
    latencies: list[float] = []
    probe = _Probe()
    release = asyncio.Event()

    async def ours_cleanup(session: Session) -> None:
        if session.key == STUCK:
            await release.wait()

    async def baseline_clear_user(user_id: str | None) -> None:
        if user_id == STUCK:
            await release.wait()

    with real_room() as room:
        feed = room._on_room_event
        if mine:
            manager = _probe_ours(room, probe, ours_cleanup)
        else:
            seed = _probe_baseline(room, probe, baseline_clear_user)
        feed(connected(STUCK, "PA_stuck", active=True))
        if not mine:
            seed.update_session_user("PA_stuck", STUCK)
        feed(disconnected(STUCK))
        await asyncio.sleep(0)  # the stuck cleanup starts and blocks
        gc.collect()
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < hang:
            await _visit(room, probe, n, mine, "cleaned", latencies)
            n += 1
        hung_for = time.perf_counter() - started
        if mine:
            assert manager.state_of(STUCK) is State.DISCONNECTING, "the hang ended early"
        else:
            assert not seed.active_sessions["PA_stuck"]["cleanup_done"], "the hang ended early"
        unstuck = probe.expect(STUCK if mine else "PA_stuck", "cleaned")
        release.set()
        await unstuck
        if mine:
            await manager.aclose()
    return latencies, hung_for


async def measure(sizes: Sizes, run: int) -> list[Row]:
    mine = await _event_to_state(sizes.latency_samples, mine=True)
    base = await _event_to_state(sizes.latency_samples, mine=False)
    hol_mine, hung_mine = await _head_of_line(sizes.hol_hang, mine=True)
    hol_base, _ = await _head_of_line(sizes.hol_hang, mine=False)
    path = "RoomEvent → Room._on_room_event → state"
    hol_note = (
        f"{len(hol_mine):,} timed events of other users during a {hung_mine:.1f} s hang"
        " (disconnect timed to cleaned)"
    )
    return [
        Row(
            "event → state latency",
            "p50",
            "s",
            "lower",
            note=f"{path}; {len(mine):,} events",
            ours=[percentile(mine, 50)],
            baseline=[percentile(base, 50)],
        ),
        Row(
            "event → state latency",
            "p99",
            "s",
            "lower",
            Target(200e-6, "lower", "≤ 200 µs"),
            note="connect, active, disconnect alike",
            ours=[percentile(mine, 99)],
            baseline=[percentile(base, 99)],
        ),
        Row(
            "head-of-line isolation",
            "other users' event → state, p50",
            "s",
            "lower",
            note=hol_note,
            ours=[percentile(hol_mine, 50)],
            baseline=[percentile(hol_base, 50)],
        ),
        Row(
            "head-of-line isolation",
            "other users' event → state, p99",
            "s",
            "lower",
            Target(1e-3, "lower", "≤ 1 ms"),
            note="one user's cleanup hangs throughout",
            ours=[percentile(hol_mine, 99)],
            baseline=[percentile(hol_base, 99)],
        ),
    ]
