"""The ``store`` figure: what a durable store costs, against the default MemoryStore.

Both columns run our manager on the same events; "ours" is a
:class:`RedisStore` on a ``redis-server`` this figure starts (in a temp dir,
on a free loopback port), the "baseline" column is the default
:class:`MemoryStore` (no store work at all).

*Throughput*: full lifecycles as in the ``lifecycle`` figure. With Redis,
every cleanup first awaits its claim (the price of exactly-once across
processes; the cleanups that end together are claimed in one round trip)
and every change is written behind.

*Event → state with a slow Redis*: the manager's Redis sits behind a local
TCP proxy that delays every answer by 5 ms; connect, active and disconnect
are timed from the ``RoomEvent`` to the state it leads to, as in the
``latency`` figure. Writes are off the event path, so this must stay within
1.2x of MemoryStore's p99, and throughput at 0.85x MemoryStore's or more.

*Fleet scale* (issue 20), on the same redis-server, counted by the server
itself (``INFO``: commands processed and bytes received):

- steady state: 1,000 idle sessions in one room held by one process (the
  lease refresh and the room's TTL renewal are all that runs), in commands
  and bytes per session-minute;
- one lifecycle (connect, active, disconnect, cleanup claim, grace, removal):
  the commands the manager sends for it;
- restore: ``load(room)`` of 10,000 sessions with 10M unrelated keys in the
  database (``DEBUG POPULATE``);
- the fleet view: ``fleet_snapshot`` of 100,000 sessions in 1,000 rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, Transition
from livekit_lifecycle.stores import MemoryStore, RedisStore, SessionRecord, SessionStore
from livekit_loopback.redis_server import RedisServer, RedisUnavailable

from . import _subjects
from ._lifecycle import EVENTS_PER_LIFECYCLE, GRACE, _feed
from ._rooms import activated, connected, disconnected, lifecycles, real_room
from ._sizes import Sizes
from ._stats import Row, Target, percentile

FIGURE = "store"
REDIS_DELAY = 0.005


class _SlowProxy:
    """A TCP proxy to ``port`` that delays every answer by ``delay`` seconds.

    Runs in a process of its own, off the benchmark's CPU where there is
    another one: a Redis across the network costs this process nothing but
    the wait, and neither must the proxy standing in for it.
    """

    def __init__(self, port: int, delay: float) -> None:
        self._port = port
        self._delay = delay
        self._process: asyncio.subprocess.Process | None = None
        self._listening = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._listening}/0"

    async def __aenter__(self) -> _SlowProxy:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._slow_proxy",
            str(self._port),
            str(self._delay),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        self._listening = int(line.split()[1])
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


@contextlib.asynccontextmanager
async def _redis() -> AsyncIterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="lkl-bench-redis-") as directory:
        async with RedisServer(directory) as server:
            # Off the benchmark's CPU where there is another: a production Redis
            # does not share the agent's core.
            if server.pid is not None and hasattr(os, "sched_setaffinity"):
                others = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
                if others:
                    os.sched_setaffinity(server.pid, others)
            yield server


def _manager(room: rtc.Room, store: SessionStore, **config: Any) -> LifecycleManager:
    manager = LifecycleManager(LifecycleConfig(store=store, **config))
    manager.add_cleanup(_subjects.noop_cleanup)
    return manager


class _InProcessDurable(MemoryStore):
    """A MemoryStore that says it is durable: the manager then does all of a durable
    store's work (marks, renders, writes, a claim per cleanup, sessions waiting for it),
    and every call is answered in this process at once. The anatomy rows: what the store
    work costs without any I/O, against what Redis adds to it."""

    @property
    def durable(self) -> bool:
        return True


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Collections:
    """Counts the collector's runs (young ones: generation 0) while it is installed."""

    def __init__(self) -> None:
        self.young = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            self.young += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        gc.callbacks.append(self)
        try:
            yield
        finally:
            gc.callbacks.remove(self)


async def _throughput(sizes: Sizes, url: str | None, store: SessionStore | None = None) -> float:
    if store is None:
        store = MemoryStore() if url is None else _redis_store(url)
    script = lifecycles(sizes.lifecycles)
    with real_room() as room:
        countdown = _subjects.Countdown(len(script))
        manager = _manager(room, store, grace_period=GRACE)
        manager.on("removed", countdown.tick)
        manager.attach(room)
        await manager.idle()  # a durable store restores first
        gc.collect()
        start = time.perf_counter()
        await _feed(room, script, sizes.chunk)
        await countdown.done
        elapsed = time.perf_counter() - start
        await manager.aclose()
    if isinstance(store, RedisStore):
        await store.aclose()
    return elapsed


async def _event_to_state(samples: int, url: str | None) -> list[float]:
    store: SessionStore = MemoryStore() if url is None else _redis_store(url)
    latencies: list[float] = []
    waiting: dict[tuple[str, str], asyncio.Future[float]] = {}

    def hit(key: str, state: str) -> None:
        future = waiting.pop((key, state), None)
        if future is not None:
            future.set_result(time.perf_counter())

    def changed(session: Session, transition: Transition) -> None:
        hit(session.key, transition.dest.value)

    with real_room() as room:
        manager = _manager(room, store, grace_period=GRACE)
        manager.on("created", lambda session: hit(session.key, "connecting"))
        manager.on("state_changed", changed)
        manager.attach(room)
        await manager.idle()
        gc.collect()
        feed = room._on_room_event
        loop = asyncio.get_running_loop()
        for n in range(samples):
            identity = f"user{n}"
            for event, state in (
                (connected(identity, f"PA_{identity}"), "connecting"),
                (activated(identity), "active"),
                (disconnected(identity), "disconnecting"),
            ):
                reported = waiting[identity, state] = loop.create_future()
                start = time.perf_counter()
                feed(event)
                latencies.append(await reported - start)
                await asyncio.sleep(0)
        await manager.aclose()
    if isinstance(store, RedisStore):
        await store.aclose()
    return latencies


def _redis_store(url: str) -> RedisStore:
    return RedisStore.from_url(url, namespace=f"bench{uuid.uuid4().hex[:8]}")


async def measure(sizes: Sizes, run: int) -> list[Row]:
    try:
        async with _redis() as server:
            # Alternate who goes first so that neither always inherits the other's heap.
            order = (None, server.url) if run % 2 else (server.url, None)
            elapsed = {url: await _throughput(sizes, url) for url in order}
            in_process = await _throughput(sizes, None, _InProcessDurable())
            with _collector_off():
                bare = {url: await _throughput(sizes, url) for url in order}
                bare_in_process = await _throughput(sizes, None, _InProcessDurable())
            slow_young, memory_young = _Collections(), _Collections()
            async with _SlowProxy(server.port, REDIS_DELAY) as proxy:
                with slow_young.counting():
                    slow = await _event_to_state(sizes.latency_samples, proxy.url)
            with memory_young.counting():
                memory = await _event_to_state(sizes.latency_samples, None)
            redis_elapsed, bare_redis = elapsed[server.url], bare[server.url]
            note = f"{sizes.lifecycles:,} lifecycles; Redis on loopback, claims in batches"
            scale = await _fleet_scale(server, quick=sizes.lifecycles < 5_000)
    except RedisUnavailable as exc:
        nan = math.nan
        redis_elapsed, elapsed, slow, memory = nan, {None: nan}, [], []
        in_process, bare, bare_in_process = nan, {None: nan}, nan
        slow_young, memory_young = _Collections(), _Collections()
        note = f"not measured: {exc}"
        scale = {}
        bare_redis = nan
    events = sizes.lifecycles * EVENTS_PER_LIFECYCLE
    return [
        Row(
            FIGURE,
            "lifecycle events per second, RedisStore vs MemoryStore",
            "events/s",
            "higher",
            Target(0.85, "higher", "≥ 0.85x MemoryStore"),
            target_on_ratio=True,
            note=note,
            ours=[events / redis_elapsed],
            baseline=[events / elapsed[None]],
        ),
        *(
            Row(
                FIGURE,
                f"anatomy: events per second, {arm}",
                "events/s",
                "higher",
                note=why,
                ours=[events / ours],
                baseline=[events / base],
            )
            for arm, why, ours, base in (
                (
                    "a durable store answering in this process",
                    "a durable store's work without its I/O (_InProcessDurable), vs MemoryStore",
                    in_process,
                    elapsed[None],
                ),
                (
                    "with the collector off, RedisStore",
                    "gc.disable() for both columns: what is left is the store's work proper",
                    bare_redis,
                    bare[None],
                ),
                (
                    "with the collector off, in-process durable store",
                    "gc.disable() for both columns",
                    bare_in_process,
                    bare[None],
                ),
            )
        ),
        Row(
            FIGURE,
            f"event → state p99, Redis answering in {REDIS_DELAY * 1e3:.0f} ms vs MemoryStore",
            "s",
            "lower",
            Target(1.2, "lower", "≤ 1.2x MemoryStore"),
            target_on_ratio=True,
            note="writes are behind the event path: Redis's latency must not show",
            ours=[percentile(slow, 99)],
            baseline=[percentile(memory, 99)],
        ),
        Row(
            FIGURE,
            "anatomy: young collections during the event → state run",
            "runs",
            "lower",
            note="sessions waiting for their claim outlive collections MemoryStore's never see",
            ours=[float(slow_young.young)],
            baseline=[float(memory_young.young)],
        ),
        *_scale_rows(scale),
    ]


_SCALE_ROWS = (
    # key, metric, unit, target
    ("steady_commands", "steady state, commands per session-minute", "cmd", 0.05, "≤ 0.05"),
    ("steady_bytes", "steady state, bytes into Redis per session-minute", "B", 50.0, "≤ 50 B"),
    ("lifecycle_commands", "commands per lifecycle (connect → removed)", "cmd", 4.0, "≤ 4"),
    ("restore", "restore of one room's sessions among unrelated keys", "s", 0.2, "≤ 200 ms"),
    ("fleet", "fleet_snapshot of every room", "s", 1.0, "≤ 1 s"),
)


def _scale_rows(scale: dict[str, tuple[float, str]], only: str | None = None) -> list[Row]:
    rows = []
    for key, metric, unit, bound, says in _SCALE_ROWS:
        if only is not None and key != only:
            continue
        value, note = scale.get(key, (math.nan, "not measured"))
        rows.append(
            Row(
                FIGURE,
                metric,
                unit,
                "lower",
                Target(bound, "lower", says),
                note=note,
                ours=[value],
                baseline=[],
            )
        )
    return rows


async def _server_counts(client: Any) -> tuple[int, int]:
    stats = await client.info("stats")
    return int(stats["total_commands_processed"]), int(stats["total_net_input_bytes"])


class _Commands:
    """Counts the commands a store's client sends (a pipeline's one by one; a script call
    is one: the server's own count would add every command the script runs)."""

    def __init__(self, store: RedisStore) -> None:
        self.sent = 0
        client = store.client
        send, pipeline = client.execute_command, client.pipeline

        async def counted(*args: Any, **options: Any) -> Any:
            self.sent += 1
            return await send(*args, **options)

        def counted_pipeline(*args: Any, **options: Any) -> Any:
            pipe = pipeline(*args, **options)
            execute = pipe.execute

            async def run(*a: Any, **k: Any) -> Any:
                self.sent += len(pipe.command_stack)
                return await execute(*a, **k)

            pipe.execute = run
            return pipe

        client.execute_command = counted
        client.pipeline = counted_pipeline


def _record(room: str, key: str) -> SessionRecord:
    """A session as the scale rows store it: active, three transitions of history."""
    history = tuple(
        {"source": "connecting", "dest": "active", "trigger": "activate", "at": 1.0 + n}
        for n in range(3)
    )
    return SessionRecord(
        room=room, key=key, state="active", identity=key, sid=f"PA_{key}", history=history
    )


async def _fleet_view(
    server: RedisServer, rooms: int, per_room: int, *, repeats: int
) -> tuple[float, str]:
    """``fleet_snapshot`` of ``rooms`` x ``per_room`` sessions: the median wall clock of
    ``repeats``, and in the note the median CPU time of this process (the machine is
    shared: the wall clock counts whatever else runs, the CPU time what the view costs)."""
    from livekit_lifecycle.stores import StoreWrite, fleet_snapshot

    fleet = RedisStore.from_url(server.url, namespace="bench-fleet", timeout=60)
    for r in range(rooms):
        await fleet.write(
            [
                StoreWrite(f"room{r}", f"u{n}", _record(f"room{r}", f"u{n}"), 90.0)
                for n in range(per_room)
            ]
        )
    times, cpu = [], []
    for _ in range(repeats):
        start, used = time.perf_counter(), time.process_time()
        snapshot = await fleet_snapshot(fleet)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - used)
        assert sum(len(s) for s in snapshot["rooms"].values()) == rooms * per_room
        # Freed before the next one starts: freeing 100,000 entries (~0.1 s) is the
        # caller's cost, whenever it lets a view go, not the next view's.
        del snapshot
    await fleet.aclose()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        sorted(times)[repeats // 2],
        f"{rooms * per_room:,} sessions in {rooms:,} rooms, median of {repeats};"
        f" CPU {sorted(cpu)[repeats // 2]:.2f} s; load average {load:.1f}",
    )


async def measure_fleet(sizes: Sizes, run: int) -> list[Row]:
    """The ``fleet`` figure (``--only fleet``): the store figure's fleet row alone, five
    snapshots a run (about 40 s a run at full size: writing the records is most of it)."""
    rooms = 100 if sizes.lifecycles < 5_000 else 1_000
    try:
        async with _redis() as server:
            scale = {"fleet": await _fleet_view(server, rooms, 100, repeats=5)}
    except RedisUnavailable as exc:
        scale = {"fleet": (math.nan, f"not measured: {exc}")}
    return _scale_rows(scale, only="fleet")


async def _fleet_scale(server: RedisServer, *, quick: bool) -> dict[str, tuple[float, str]]:
    """The issue-20 rows, measured by the redis-server's own counters."""
    from livekit_lifecycle.stores import StoreWrite

    found: dict[str, tuple[float, str]] = {}
    admin = RedisStore.from_url(server.url, namespace="bench-admin", timeout=300)  # POPULATE
    client = admin.client
    await client.flushall()

    record = _record
    # Steady state: 1,000 idle sessions, one process; only the lease loop runs.
    sessions, window = 1_000, (4.0 if quick else 30.0)
    holder = RedisStore.from_url(server.url, namespace="bench-steady")
    sent = _Commands(holder)
    await holder.write(
        [StoreWrite("steady", f"u{n}", record("steady", f"u{n}"), 90.0) for n in range(sessions)]
    )
    commands = sent.sent
    _, received = await _server_counts(client)
    await asyncio.sleep(window)
    _, received2 = await _server_counts(client)
    minutes = sessions * window / 60
    found["steady_commands"] = (
        (sent.sent - commands) / minutes,
        f"{sessions:,} idle sessions, {window:.0f} s, lease_ttl {holder.lease_ttl:g} s",
    )
    found["steady_bytes"] = (
        (received2 - received - 26) / minutes,
        f"{sessions:,} idle sessions, one process",
    )
    await holder.aclose()

    # One lifecycle through a manager: the commands it sends (lease excluded: steady).
    count = 50 if quick else 500
    store = _redis_store(server.url)
    sent = _Commands(store)
    with real_room() as room:
        countdown = _subjects.Countdown(count)
        manager = _manager(room, store, grace_period=0.05)
        manager.on("removed", countdown.tick)
        manager.attach(room)
        await manager.idle()
        before = sent.sent
        feed = room._on_room_event
        for n in range(count):
            identity = f"user{n}"
            feed(connected(identity, f"PA_{identity}"))
            feed(activated(identity))
            await asyncio.sleep(0.03)
            feed(disconnected(identity))
            await asyncio.sleep(0.01)
        await countdown.done
        await manager.idle()
        assert manager._persist is not None
        await manager._persist.writer.flush(30)
        after = sent.sent
        await manager.aclose()
    await store.aclose()
    found["lifecycle_commands"] = (
        (after - before) / count,
        f"{count} lifecycles, one at a time",
    )

    async def restore_and_fleet() -> None:
        # Restore: one room of 10,000 sessions among 10M unrelated keys.
        sessions, unrelated = (1_000, 100_000) if quick else (10_000, 10_000_000)
        await client.execute_command("DEBUG", "POPULATE", unrelated, "unrelated")
        writer = RedisStore.from_url(server.url, namespace="bench-restore", timeout=60)
        batch = [StoreWrite("big", f"u{n}", record("big", f"u{n}"), 90.0) for n in range(sessions)]
        await writer.write(batch)
        reader = RedisStore.from_url(server.url, namespace="bench-restore", timeout=60)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            loaded = await reader.load("big")
            times.append(time.perf_counter() - start)
            assert len(loaded) == sessions
        found["restore"] = (
            sorted(times)[2],
            f"{sessions:,} sessions, {unrelated:,} unrelated keys, median of 5",
        )
        await reader.aclose()
        await writer.aclose()

        # The fleet view: 100,000 sessions in 1,000 rooms.
        rooms, per_room = (100, 100) if quick else (1_000, 100)
        found["fleet"] = await _fleet_view(server, rooms, per_room, repeats=3)

    try:
        # Bounded: a full-size run once stalled here (issue 20's report: RedisStore.aclose
        # waited for ever on a lease loop whose cancellation redis-py had swallowed,
        # after decoding 50,000 records at once had let that lease expire). A row
        # measured before a stall says so; one not measured is "not measured".
        await asyncio.wait_for(restore_and_fleet(), 300)
    except asyncio.TimeoutError:
        for key in ("restore", "fleet"):
            value, note = found.get(key, (math.nan, "not measured"))
            found[key] = (value, f"{note}; the step then timed out after 300 s")
    await client.flushall()
    await admin.aclose()
    return found
