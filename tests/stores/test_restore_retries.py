"""A store that stalls, is down or is slow when a manager attaches (real redis-server).

Events are held for at most ``hold_for`` seconds while the load is retried; then the manager
goes on in memory, and merges what the store holds once it answers, never overwriting the
stored sessions of users it has not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livekit_lifecycle import LifecycleManager, State
from livekit_lifecycle.stores import RedisStore
from livekit_lifecycle.testing import RoomDriver
from livekit_loopback.redis_server import RedisServer

from .test_corrupt_records import fields, put_raw
from .test_manager_store import ROOM, WAIT, Fleet, settled, until
from .test_manager_store import fleet as fleet  # the fixture

pytestmark = [
    pytest.mark.redis,
    # They freeze or kill the test's redis-server: one node, not the cluster.
    pytest.mark.parametrize("fleet_url", ["redis"], indirect=True),
]

HOLD = 0.6
REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server (it keeps its connections and answers nothing), SIGCONT after."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def attach(fleet: Fleet, driver: RoomDriver, **store_options: float) -> LifecycleManager:
    manager = fleet.manager(None, store=fleet.store(**store_options))
    assert manager._persist is not None
    manager._persist.hold_for = HOLD
    manager.attach(driver.room)
    return manager


async def stored_before(fleet: Fleet) -> None:
    """Alice and Dave in grace, written by a process that died."""
    store = fleet.store()
    for key in ("alice", "dave"):
        await put_raw(store, key, json.dumps(fields(key, data={"n": 1, "mine": key})))


async def check_merged(fleet: Fleet, manager: LifecycleManager) -> None:
    """Dave (never seen) restored as stored; Alice (back meanwhile) merged; Carol new."""
    await until(lambda: manager.stats["sessions_restored"] == 1, "the merge")
    await manager.idle()
    dave, alice, carol = manager.get("dave"), manager.get("alice"), manager.get("carol")
    assert dave is not None and dave.state is State.GRACE and dave.user_id == "u-dave"
    assert alice is not None and alice.state is State.ACTIVE
    assert alice.user_id == "u-alice" and alice.data == {"n": 2, "mine": "alice"}
    assert carol is not None and carol.user_id is None
    await settled(manager)
    stored = await fleet.stored()
    assert (stored["dave"].user_id, stored["dave"].data) == ("u-dave", {"n": 1, "mine": "dave"})
    assert stored["alice"].data == {"n": 2, "mine": "alice"}
    assert stored["alice"].user_id == "u-alice" and stored["alice"].state == "active"
    assert stored["carol"].state == "active"


async def in_memory_meanwhile(driver: RoomDriver, manager: LifecycleManager) -> float:
    """Carol and Alice join during the hold; seconds until their events were handled."""
    started = time.monotonic()
    driver.connect("carol", active=True)
    driver.connect("alice", sid="PA_alice_2", active=True)
    assert manager.get("carol") is None  # held
    await until(lambda: manager.get("alice") is not None, "the hold's end", timeout=WAIT)
    waited = time.monotonic() - started
    alice = manager.get("alice")
    assert alice is not None and alice.user_id is None  # not merged yet: in memory
    alice.data["n"] = 2
    return waited


async def test_a_frozen_store_holds_events_a_bounded_time_then_merges(
    redis_server: RedisServer, fleet: Fleet
) -> None:
    await stored_before(fleet)
    async with RoomDriver(ROOM) as driver:
        with frozen(redis_server):
            # A long client timeout: the load hangs (not refused) and must be abandoned.
            manager = attach(fleet, driver, timeout=60.0)
            waited = await in_memory_meanwhile(driver, manager)
            assert waited < HOLD + 1.0, waited
            assert manager.stats["store_restores_deferred"] == 1
            await manager.idle()  # the background retry is not what idle waits for
            await asyncio.sleep(HOLD)
            assert manager.stats["sessions_restored"] == 0
        await check_merged(fleet, manager)
        await manager.aclose()


async def test_a_killed_store_is_retried_then_merged_when_it_is_back(
    redis_server: RedisServer, fleet: Fleet
) -> None:
    await redis_server.kill()
    async with RoomDriver(ROOM) as driver:
        manager = attach(fleet, driver, timeout=0.3)
        idle = asyncio.ensure_future(manager.idle())  # called during the hold
        waited = await in_memory_meanwhile(driver, manager)
        # It returns when the hold ends, not when the store is back.
        await asyncio.wait_for(idle, WAIT)
        assert waited < HOLD + 1.0, waited
        assert manager.stats["store_errors"] >= 2, "the load was not retried"
        assert manager.stats["store_outages"] == 1
        # Back with the records a replica kept (a fresh redis-server starts empty).
        await redis_server.start()
        await stored_before(fleet)
        await check_merged(fleet, manager)
        await manager.aclose()


async def test_a_slow_store_is_not_abandoned_its_late_answer_is_merged(
    redis_server: RedisServer, fleet: Fleet
) -> None:
    await stored_before(fleet)
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks._slow_proxy",
        str(redis_server.port),
        "0.4",  # per answer: the load (connect, scan, read) takes a few, past HOLD
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proxy.stdout is not None
        line = await asyncio.wait_for(proxy.stdout.readline(), WAIT)
        port = int(line.split()[1])
        # Every store command (the load included) through the slow proxy.
        slow = RedisStore.from_url(
            f"redis://127.0.0.1:{port}/0", namespace=fleet.namespace, timeout=10.0
        )
        fleet.stores.append(slow)
        async with RoomDriver(ROOM) as driver:
            manager = fleet.manager(None, store=slow)
            assert manager._persist is not None
            manager._persist.hold_for = HOLD
            manager.attach(driver.room)
            waited = await in_memory_meanwhile(driver, manager)
            assert waited < HOLD + 1.0, waited
            await check_merged(fleet, manager)
            # The one load answered late: merged, not abandoned and retried.
            assert manager.stats["store_errors"] == 0
            assert manager.stats["store_restores_deferred"] == 1
            await manager.aclose()
    finally:
        proxy.terminate()
        await proxy.wait()


async def test_closing_while_the_store_is_down_ends_the_retry(
    redis_server: RedisServer, fleet: Fleet
) -> None:
    await redis_server.kill()
    async with RoomDriver(ROOM) as driver:
        manager = attach(fleet, driver, timeout=0.3)
        persist = manager._persist
        assert persist is not None
        await until(lambda: manager.stats["store_restores_deferred"] == 1, "the hold's end")
        retry = persist._retry_task
        assert retry is not None and not retry.done()
        await manager.aclose()
        assert retry.cancelled()  # cancelled and awaited: nothing left running
        assert manager.stats["sessions_restored"] == 0
