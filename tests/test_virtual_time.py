"""``livekit_lifecycle.testing.virtual_time``: what docs/testing.md promises users of it."""

from __future__ import annotations

import asyncio

import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import Deadlock, clock, run


def test_the_grace_window_lasts_exactly_grace_period() -> None:
    # The example of docs/testing.md, "Grace windows in no time".
    async def main() -> None:
        config = LifecycleConfig(grace_period=30)
        async with RoomDriver() as driver, LifecycleManager(config) as manager:
            manager.attach(driver.room)
            driver.connect("alice", active=True)
            driver.disconnect("alice")
            await manager.wait_for("alice", State.GRACE, timeout=1)
            opened = clock().time()
            await manager.wait_for("alice", State.REMOVED, timeout=60)
            assert clock().time() - opened == pytest.approx(30)

    run(main)


def test_the_clock_stands_still_while_something_is_ready() -> None:
    async def main() -> float:
        start = clock().time()
        for _ in range(100):
            await asyncio.sleep(0)
        return clock().time() - start

    assert run(main) == 0


def test_waiting_on_nothing_that_can_happen_raises_deadlock() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Deadlock, match="no timer is scheduled"):
        run(main)


def test_clock_outside_a_virtual_time_loop_says_how_to_run() -> None:
    async def main() -> None:
        clock()

    with pytest.raises(RuntimeError, match=r"virtual_time\.run"):
        asyncio.run(main())
