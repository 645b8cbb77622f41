"""The ``store`` figure: what a durable store costs, against the default MemoryStore.

Both columns run our manager on the same events; "ours" is a
:class:`RedisStore` on a ``redis-server`` this figure starts (in a temp dir,
on a free loopback port), the "baseline" column is the default
:class:`MemoryStore` (no store work at all).

*Throughput*: full lifecycles as in the ``lifecycle`` figure. With Redis,
every cleanup first awaits its claim (one round trip per ended connection,
the price of exactly-once across processes) and every change is written
behind.

*Event → state with a slow Redis*: the manager's Redis sits behind a local
TCP proxy that delays every answer by 5 ms; connect, active and disconnect
are timed from the ``RoomEvent`` to the state it leads to, as in the
``latency`` figure. Writes are off the event path, so this must stay within
2x of MemoryStore's p99.
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
from collections.abc import AsyncIterator
from typing import Any

from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, Transition
from livekit_lifecycle.stores import MemoryStore, RedisStore, SessionStore
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


async def _throughput(sizes: Sizes, url: str | None) -> float:
    store: SessionStore = MemoryStore() if url is None else _redis_store(url)
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
            async with _SlowProxy(server.port, REDIS_DELAY) as proxy:
                slow = await _event_to_state(sizes.latency_samples, proxy.url)
            memory = await _event_to_state(sizes.latency_samples, None)
            redis_elapsed = elapsed[server.url]
            note = f"{sizes.lifecycles:,} lifecycles; Redis on loopback, one claim per cleanup"
    except RedisUnavailable as exc:
        nan = math.nan
        redis_elapsed, elapsed, slow, memory = nan, {None: nan}, [], []
        note = f"not measured: {exc}"
    events = sizes.lifecycles * EVENTS_PER_LIFECYCLE
    return [
        Row(
            FIGURE,
            "lifecycle events per second, RedisStore vs MemoryStore",
            "events/s",
            "higher",
            note=note,
            ours=[events / redis_elapsed],
            baseline=[events / elapsed[None]],
        ),
        Row(
            FIGURE,
            f"event → state p99, Redis answering in {REDIS_DELAY * 1e3:.0f} ms vs MemoryStore",
            "s",
            "lower",
            Target(2.0, "lower", "≤ 2x MemoryStore"),
            target_on_ratio=True,
            note="writes are behind the event path: Redis's latency must not show",
            ours=[percentile(slow, 99)],
            baseline=[percentile(memory, 99)],
        ),
    ]
