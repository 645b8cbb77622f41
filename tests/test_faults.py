"""Fault injection: failing, hanging, self-cancelling user code; concurrent and cancelled shutdowns.

Every scenario runs on a virtual-time loop (``livekit_lifecycle.testing.virtual_time``), so "hangs
past ``cleanup_timeout``" and "finishes within ``shutdown_timeout``" are exact
statements about the event loop's clock, not wall-clock guesses. After each
one: the manager's invariants hold, shutdown leaves nothing behind, and each
failure was logged exactly once, with its context as record attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State, Transition
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.invariants import InvariantChecker, check_closed, check_manager, raise_for
from livekit_lifecycle.manager import _SHUTDOWN_SLACK
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import clock, run

ROOM = "fault-room"
Scenario = Callable[[RoomDriver, LifecycleManager], Coroutine[Any, Any, None]]


def scenario(caplog: pytest.LogCaptureFixture, body: Scenario, **config: Any) -> InvariantChecker:
    """Run ``body(driver, manager)`` on a fresh virtual-time loop; check the manager after it."""
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    checker: list[InvariantChecker] = []

    async def main() -> None:
        async with RoomDriver(ROOM) as driver:
            manager = LifecycleManager(LifecycleConfig(**config))
            checker.append(InvariantChecker(manager))
            manager.attach(driver.room)
            await body(driver, manager)
            await manager.aclose()
            await settle()
            raise_for(check_closed(manager))
            checker[0].raise_if_violated()
            assert not manager._supervisor.abandoned, manager._supervisor.abandoned
            left = asyncio.all_tasks() - {asyncio.current_task()}
            assert not left, f"tasks left: {left}"

    run(main)
    return checker[0]


async def settle(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The structured fields of every record named ``event`` (fields are record attributes)."""
    return [record.__dict__ for record in caplog.records if record.msg == event]


def assert_session_context(fields: dict[str, Any], key: str, state: str) -> None:
    assert fields["room"] == ROOM and fields["key"] == key and fields["state"] == state, fields
    assert fields["identity"] and fields["sid"], fields


# --------------------------------------------------------------------------- cleanup callbacks


def _raise_sync(session: Session) -> None:
    raise ValueError("cleanup broke")


async def _raise_async(session: Session) -> None:
    await asyncio.sleep(0)
    raise ValueError("cleanup broke")


async def _cancel_itself(session: Session) -> None:
    await asyncio.sleep(0)
    raise asyncio.CancelledError


async def _cancel_own_task(session: Session) -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        (_raise_sync, "ValueError: cleanup broke"),
        (_raise_async, "ValueError: cleanup broke"),
        (_cancel_itself, "CancelledError: "),
        (_cancel_own_task, "CancelledError: "),
    ],
    ids=["raises", "raises-async", "raises-cancelled", "cancels-its-task"],
)
def test_a_failing_cleanup_is_isolated_and_logged_once(
    caplog: pytest.LogCaptureFixture, failing: Callable[[Session], Any], error: str
) -> None:
    after: list[str] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(failing)
        manager.add_cleanup(lambda s: after.append(s.sid))
        participant = driver.connect("alice", active=True)
        driver.disconnect("alice")
        session = await manager.wait_for("alice", State.GRACE, 1)
        assert session.cleanups == 1 and after == [participant.sid]
        assert manager.stats["callback_errors"] == 1
        raise_for(check_manager(manager))

    scenario(caplog, body, grace_period=30)
    (failure,) = logged(caplog, "cleanup.failed")
    assert_session_context(failure, "alice", "disconnecting")
    assert failure["callback"].endswith(failing.__name__) and failure["category"] == "cleanup"
    assert failure["error"] == error
    assert after and len(after) == 1  # the next callback ran, once


def _cancel_sync(session: Session) -> None:
    raise asyncio.CancelledError


def _cancel_runner_sync(session: Session) -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()


@pytest.mark.parametrize("failing", [_cancel_sync, _cancel_runner_sync])
def test_a_sync_cleanup_that_cancels_is_isolated_and_logged_once(
    caplog: pytest.LogCaptureFixture, failing: Callable[[Session], Any]
) -> None:
    calls: list[str] = []

    def counted(session: Session) -> None:
        calls.append("failing")
        failing(session)

    async def next_one(session: Session) -> None:
        calls.append("next")
        await asyncio.sleep(0)

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(counted)
        manager.add_cleanup(next_one)
        driver.connect("alice", active=True)
        driver.disconnect("alice")
        await manager.wait_for("alice", State.GRACE, 1)

    scenario(caplog, body, grace_period=30)
    assert calls == ["failing", "next"]
    assert len(logged(caplog, "cleanup.failed")) == 1
    assert not logged(caplog, "shutdown.session_abandoned")


def test_sync_cleanups_due_in_the_same_turn_are_isolated_from_each_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleaned: list[str] = []

    def cleanup(session: Session) -> None:
        cleaned.append(session.key)
        if session.key == "bob":
            raise ValueError("cleanup broke")

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(cleanup)
        users = ("alice", "bob", "carol")
        for name in users:
            driver.connect(name, active=True)
        for name in users:
            driver.disconnect(name)
        # All three are due on the loop's next turn: one loop callback runs them.
        batch = manager._runtime._batch
        assert batch is not None and [s.key for s, _ in batch[0]] == list(users)
        for name in users:
            session = await manager.wait_for(name, State.GRACE, 1)
            assert session.cleanups == 1
        assert cleaned == list(users)

    scenario(caplog, body, grace_period=30)
    (failure,) = logged(caplog, "cleanup.failed")
    assert_session_context(failure, "bob", "disconnecting")


class _Fatal(BaseException):
    """Not an ``Exception``: user code raising it is not isolated, like KeyboardInterrupt."""


def test_a_base_exception_in_one_sync_cleanup_still_lets_the_others_run() -> None:
    loop_errors: list[BaseException] = []

    def cleanup(session: Session) -> None:
        if session.key == "bob":
            raise _Fatal

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: loop_errors.append(context["exception"])
        )
        async with RoomDriver(ROOM) as driver:
            manager = LifecycleManager(LifecycleConfig(grace_period=30))
            manager.add_cleanup(cleanup)
            manager.attach(driver.room)
            for name in ("alice", "bob", "carol"):
                driver.connect(name, active=True)
                driver.disconnect(name)
            await manager.wait_for("carol", State.GRACE, 1)
            assert manager.state_of("alice") is State.GRACE
            # The exception left bob's cleanup half done; it reached the loop.
            assert manager.state_of("bob") is State.DISCONNECTING
            assert [type(e) for e in loop_errors] == [_Fatal]
            await manager.aclose()
            raise_for(check_closed(manager))

    run(main)


def test_a_cleanup_hanging_past_cleanup_timeout_is_cancelled_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled: list[bool] = []
    after: list[str] = []

    async def hang(session: Session) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(hang)
        manager.add_cleanup(lambda s: after.append(s.key))
        driver.connect("alice", active=True)
        started = clock().time()
        driver.disconnect("alice")
        await manager.wait_for("alice", State.GRACE, 60)
        assert clock().time() - started == pytest.approx(5.0)  # exactly cleanup_timeout
        assert cancelled == [True] and after == ["alice"]
        assert manager.stats["callback_timeouts"] == 1

    scenario(caplog, body, grace_period=30, cleanup_timeout=5)
    (timeout,) = logged(caplog, "cleanup.timeout")
    assert_session_context(timeout, "alice", "disconnecting")
    assert timeout["callback"].endswith("hang") and timeout["levelname"] == "WARNING"
    assert not logged(caplog, "cleanup.failed")


def test_a_cleanup_ignoring_cancellation_is_abandoned_not_awaited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished: list[str] = []

    async def stubborn(session: Session) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # swallows the timeout's cancellation ...
        try:
            await asyncio.Event().wait()
        finally:
            finished.append(session.key)  # ... but not the one at shutdown

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(stubborn)
        driver.connect("alice", active=True)
        started = clock().time()
        driver.disconnect("alice")
        await manager.wait_for("alice", State.GRACE, 60)
        assert clock().time() - started == pytest.approx(5.0)
        assert len(manager._supervisor.abandoned) == 1 and finished == []

    scenario(caplog, body, grace_period=30, cleanup_timeout=5)
    assert finished == ["alice"]  # aclose() cancelled it again; scenario() saw no task left
    assert len(logged(caplog, "cleanup.timeout")) == 1


# --------------------------------------------------------------------------- listeners


def test_failing_and_hanging_listeners_are_isolated_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(session: Session, transition: Transition) -> None:
        raise RuntimeError("listener broke")

    async def broken_async(session: Session) -> None:
        raise RuntimeError("async listener broke")

    async def hanging(session: Session) -> None:
        await asyncio.Event().wait()

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.on("state_changed", broken)
        manager.once("created", broken_async)
        manager.once("created", hanging)
        driver.connect("alice")
        driver.activate("alice")
        await manager.idle()  # the clock jumps over the hanging listener's timeout
        assert manager.state_of("alice") is State.ACTIVE

    checker = scenario(caplog, body, cleanup_timeout=5)
    failed = logged(caplog, "listener.failed")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for fields in failed:
        by_name.setdefault(fields["callback"].rsplit(".", 1)[-1], []).append(fields)
        assert fields["key"] == "alice" and fields["sid"] and fields["error"], fields
    assert len(by_name["broken_async"]) == 1
    assert len(by_name["broken"]) == checker.transitions  # once per transition, no more
    assert by_name["broken"][0]["room"] == ROOM and by_name["broken"][0]["state"] == "active"
    (timeout,) = logged(caplog, "listener.timeout")
    assert timeout["hook"] == "listener:created"


# --------------------------------------------------------------------------- shutdown bounds


def test_shutdown_with_hanging_cleanups_finishes_within_shutdown_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = [f"user-{n}" for n in range(5)]

    async def hang(session: Session) -> None:
        await asyncio.Event().wait()

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(hang)
        for key in keys:
            driver.connect(key, active=True)
        started = clock().time()
        await manager.aclose()
        took = clock().time() - started
        assert 3.0 <= took <= 3.0 + _SHUTDOWN_SLACK, took

    scenario(caplog, body, cleanup_timeout=60, shutdown_timeout=3)
    timeouts = logged(caplog, "cleanup.timeout")
    assert sorted(f["key"] for f in timeouts) == keys  # once per session
    assert len(logged(caplog, "shutdown.started")) == len(logged(caplog, "shutdown.done")) == 1
    assert not logged(caplog, "shutdown.timeout")
    assert not logged(caplog, "shutdown.session_abandoned")


def test_a_hanging_async_listener_cannot_stretch_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hanging(session: Session, transition: Transition) -> None:
        await asyncio.Event().wait()

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        driver.connect("alice", active=True)
        manager.on("state_changed", hanging)  # bounded by cleanup_timeout (60 s), not shutdown
        started = clock().time()
        await manager.aclose()
        took = clock().time() - started
        assert took <= 3.0 + 2 * _SHUTDOWN_SLACK, took

    scenario(caplog, body, cleanup_timeout=60, shutdown_timeout=3)
    (timeout,) = logged(caplog, "shutdown.timeout")
    assert timeout["pending_tasks"] >= 1 and timeout["stuck_sessions"] == []


class _Resource:
    def __init__(self, name: str, log: list[str], behaviour: str) -> None:
        self.name, self.log, self.behaviour = name, log, behaviour

    async def aclose(self) -> None:
        self.log.append(self.name)
        if self.behaviour == "raise":
            raise ConnectionError(f"{self.name} is gone")
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "stubborn":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # ignores the first cancellation
            await asyncio.Event().wait()


class _SyncResource:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def close(self) -> None:
        self.log.append("sync-raise")
        raise OSError("sync close failed")


def test_resources_that_raise_or_hang_are_each_bounded_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    order: list[str] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_resource(_Resource("ok-first", order, "ok"), name="ok-first")
        manager.add_resource(_Resource("raise", order, "raise"), name="raise")
        manager.add_resource(_Resource("hang", order, "hang"), name="hang")
        manager.add_resource(_SyncResource(order), name="sync-raise")
        manager.add_resource(_Resource("stubborn", order, "stubborn"), name="stubborn")
        manager.add_resource(lambda: order.append("ok-last"), name="ok-last")
        driver.connect("alice", active=True)
        started = clock().time()
        await manager.aclose()
        took = clock().time() - started
        # Sessions left the whole budget, so each hanging resource may use cleanup_timeout.
        assert took == pytest.approx(2 * 2.0), took
        assert took <= 10.0

    scenario(caplog, body, cleanup_timeout=2, shutdown_timeout=10)
    assert order == ["ok-last", "stubborn", "sync-raise", "hang", "raise", "ok-first"]
    failed = {f["resource"]: f for f in logged(caplog, "shutdown.resource_failed")}
    assert set(failed) == {"stubborn", "sync-raise", "hang", "raise"}  # each exactly once
    assert len(logged(caplog, "shutdown.resource_failed")) == 4
    assert failed["hang"]["outcome"] == failed["stubborn"]["outcome"] == "timed_out"
    assert failed["raise"]["error"] == "ConnectionError: raise is gone"
    assert failed["sync-raise"]["error"] == "OSError: sync close failed"
    closed = sorted(f["resource"] for f in logged(caplog, "shutdown.resource_closed"))
    assert closed == ["ok-first", "ok-last"]


def test_resources_still_close_when_sessions_used_up_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hang(session: Session) -> None:
        await asyncio.Event().wait()

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(hang)
        manager.add_resource(_Resource("tts", [], "hang"), name="tts")
        driver.connect("alice", active=True)
        started = clock().time()
        await manager.aclose()
        # The cleanup phase ends at the deadline; the resource still gets its 1 s floor.
        assert clock().time() - started == pytest.approx(3.0 + 1.0)

    scenario(caplog, body, cleanup_timeout=60, shutdown_timeout=3)
    (failed,) = logged(caplog, "shutdown.resource_failed")
    assert failed["resource"] == "tts" and failed["outcome"] == "timed_out"


# --------------------------------------------------------------------------- concurrent aclose()


def test_concurrent_aclose_calls_share_one_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    closes: list[str] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        release = asyncio.Event()

        async def slow(session: Session) -> None:
            await release.wait()

        manager.add_cleanup(slow)
        manager.add_resource(lambda: closes.append("tts"), name="tts")
        driver.connect("alice", active=True)
        callers = [asyncio.ensure_future(manager.aclose()) for _ in range(5)]
        await settle()
        assert not any(c.done() for c in callers)  # nobody returns before the shutdown did
        release.set()
        await asyncio.gather(*callers)
        assert closes == ["tts"] and manager.sessions == {}

    scenario(caplog, body, grace_period=30)
    assert len(logged(caplog, "shutdown.started")) == len(logged(caplog, "shutdown.done")) == 1


def test_aclose_started_from_a_cleanup_callback(caplog: pytest.LogCaptureFixture) -> None:
    cleaned: list[str] = []
    closers: list[asyncio.Future[None]] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        def last_one_out(session: Session) -> None:
            cleaned.append(session.key)
            if session.key == "alice" and not manager.closed:
                closers.append(asyncio.ensure_future(manager.aclose()))  # not awaited: no cycle

        manager.add_cleanup(last_one_out)
        driver.connect("alice", active=True)
        driver.connect("bob", active=True)
        driver.disconnect("alice")
        await manager.idle()
        assert manager.closed and len(closers) == 1
        await closers[0]

    scenario(caplog, body, grace_period=30)
    assert sorted(cleaned) == ["alice", "bob"]
    assert not logged(caplog, "shutdown.session_abandoned")


def test_aclose_started_from_a_listener(caplog: pytest.LogCaptureFixture) -> None:
    cleaned: list[str] = []
    closers: list[asyncio.Future[None]] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        def on_change(session: Session, transition: Transition) -> None:
            if transition.dest is State.GRACE and not manager.closed:
                closers.append(asyncio.ensure_future(manager.aclose()))

        manager.on("state_changed", on_change)
        manager.add_cleanup(lambda s: cleaned.append(s.key))
        driver.connect("alice", active=True)
        driver.connect("bob", active=True)
        driver.disconnect("alice")
        await manager.idle()
        assert len(closers) == 1
        await closers[0]

    scenario(caplog, body, grace_period=30)
    assert sorted(cleaned) == ["alice", "bob"]
    assert not logged(caplog, "shutdown.session_abandoned")


@pytest.mark.parametrize("where", ["cleanup", "listener"])
def test_aclose_awaited_inside_a_callback(caplog: pytest.LogCaptureFixture, where: str) -> None:
    closed: list[str] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        async def close_from_callback(*args: object) -> None:
            await manager.aclose()

        async def on_change(session: Session, transition: Transition) -> None:
            if transition.dest is State.ACTIVE:
                await manager.aclose()

        if where == "cleanup":
            manager.add_cleanup(close_from_callback)
        else:
            manager.on("state_changed", on_change)
        manager.add_resource(lambda: closed.append("tts"), name="tts")
        driver.connect("alice", active=True)
        driver.disconnect("alice") if where == "cleanup" else None
        await settle()
        assert manager.closed
        await asyncio.wait_for(manager.aclose(), 60)  # the shutdown it started completes
        assert closed == ["tts"]

    scenario(caplog, body, grace_period=30, cleanup_timeout=10, shutdown_timeout=30)


# --------------------------------------------------------------------------- external cancellation


def test_cancelling_a_task_awaiting_wait_for_leaves_the_manager_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        release = asyncio.Event()

        async def slow(session: Session) -> None:
            await release.wait()

        manager.add_cleanup(slow)
        driver.connect("alice", active=True)
        driver.disconnect("alice")
        waiter = asyncio.ensure_future(manager.wait_for("alice", State.GRACE))
        other = asyncio.ensure_future(manager.wait_for("alice", State.GRACE))
        await settle()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert manager.state_of("alice") is State.DISCONNECTING  # the cleanup is not cancelled
        release.set()
        session = await other  # the other waiter still gets its answer
        assert session.state is State.GRACE and session.cleanups == 1
        assert InternalView(manager).waiter_count == 0

    scenario(caplog, body, grace_period=30)


def test_cancelling_a_task_awaiting_idle_leaves_the_manager_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        release = asyncio.Event()

        async def slow(session: Session) -> None:
            await release.wait()

        manager.add_cleanup(slow)
        driver.connect("alice", active=True)
        driver.disconnect("alice")
        idler = asyncio.ensure_future(manager.idle())
        await settle()
        idler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await idler
        assert len(InternalView(manager).tasks) == 1  # the runner goes on
        release.set()
        await manager.idle()
        assert manager.state_of("alice") is State.GRACE

    scenario(caplog, body, grace_period=30)


def test_cancelling_the_task_awaiting_aclose_still_completes_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        release = asyncio.Event()

        async def slow(session: Session) -> None:
            await release.wait()

        manager.add_cleanup(slow)
        manager.add_resource(lambda: closed.append("tts"), name="tts")
        driver.connect("alice", active=True)
        closer = asyncio.ensure_future(manager.aclose())
        await settle()
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        release.set()
        await asyncio.wait_for(manager.aclose(), 60)
        assert closed == ["tts"]

    scenario(caplog, body, grace_period=30, shutdown_timeout=5)


# --------------------------------------------------------------------------- shutdown races


def test_a_connect_queued_when_shutdown_starts_is_cleaned_or_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bound: list[str] = []
    cleaned: list[str] = []

    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        release = asyncio.Event()

        async def slow(session: Session) -> None:
            cleaned.append(session.sid)
            await release.wait()

        manager.add_cleanup(slow)
        manager.on("created", lambda s: bound.append(s.sid))
        driver.connect("alice", active=True)
        driver.disconnect("alice")
        driver.connect("alice", active=True)  # the reload, queued behind the cleanup
        closer = asyncio.ensure_future(manager.aclose())
        await settle()
        release.set()
        await closer

    scenario(caplog, body, grace_period=30)
    assert sorted(cleaned) == sorted(bound)  # every session's connection cleaned once
    assert not logged(caplog, "shutdown.session_abandoned")


def test_failures_during_shutdown_keep_the_room_in_their_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(driver: RoomDriver, manager: LifecycleManager) -> None:
        manager.add_cleanup(_raise_sync)
        manager.add_resource(_SyncResource([]), name="client")
        driver.connect("alice", active=True)

    scenario(caplog, body)
    (failure,) = logged(caplog, "cleanup.failed")
    assert_session_context(failure, "alice", "disconnecting")
    (resource,) = logged(caplog, "shutdown.resource_failed")
    assert resource["room"] == ROOM
