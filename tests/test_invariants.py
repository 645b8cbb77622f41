"""The invariant checks: silent on a healthy manager, and each one catches its own violation."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State, Transition
from livekit_lifecycle._bookkeeping import record
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.invariants import (
    INVARIANTS,
    InvariantChecker,
    InvariantViolation,
    Violation,
    check_closed,
    check_manager,
    check_session,
    check_transition,
    raise_for,
)
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import run

REASON = rtc.DisconnectReason
GRACE = 30.0


def _key(participant: rtc.RemoteParticipant) -> str:
    return participant.identity.split("#")[0]


def test_a_healthy_lifecycle_violates_nothing() -> None:
    """Every edge of the chart, several users, checked on every transition and when idle."""

    async def main() -> None:
        async with RoomDriver() as driver:
            manager = LifecycleManager(LifecycleConfig(grace_period=GRACE, session_key=_key))
            checker = InvariantChecker(manager, whole_manager=True)
            manager.attach(driver.room)

            async def idle() -> None:
                await manager.idle()
                assert checker.check_now(idle=True) == []

            driver.connect("alice#1")
            track = driver.publish_track("alice#1")
            driver.publish_track("alice#1")
            driver.unpublish_track("alice#1", track)
            driver.connect("bob#1", active=True)
            driver.connect("carol#1")
            await idle()
            driver.disconnect("alice#1", REASON.CLIENT_INITIATED)
            driver.connect("bob#2")  # takeover
            driver.disconnect("carol#1", REASON.PARTICIPANT_REMOVED)  # released at once
            await idle()
            driver.connect("alice#2", active=True)  # reconnect inside the window
            driver.disconnect("bob#1")  # the old tab's late leave: stale
            driver.full_reconnect()
            await idle()
            driver.disconnect("bob#2")
            await idle()
            await asyncio.sleep(GRACE)  # virtual: bob's grace expires
            await idle()
            driver.disconnect("alice#2")
            await idle()
            await manager.aclose()  # alice in grace: removed by shutdown
            raise_for(check_closed(manager))
            checker.raise_if_violated()
            assert checker.transitions >= 20

    run(main)


# --------------------------------------------------------------------------- each invariant


Corruption = Callable[[LifecycleManager, RoomDriver], Coroutine[Any, Any, list[Violation]]]


async def _session(manager: LifecycleManager, key: str = "alice") -> Session:
    session = manager.get(key)
    assert session is not None
    return session


async def _in_grace(manager: LifecycleManager, driver: RoomDriver) -> Session:
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    return await manager.wait_for("alice", State.GRACE, 1)


async def _unknown_state(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice")
    session = await _session(m)
    session._state = "limbo"  # type: ignore[assignment]
    return check_session(m, session)


async def _non_edge(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    return check_transition(Transition(State.ACTIVE, State.GRACE, "disconnect", "PA_1", 0.0))


async def _broken_path(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice", active=True)
    session = await _session(m)
    session._history.append(Transition(State.GRACE, State.REMOVED, "expire", session.sid, 0.0))
    session._state = State.REMOVED
    return check_session(m, session)


async def _too_many_cleanups(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    session = await _in_grace(m, d)
    session._cleanups = session.connections + 1
    return check_session(m, session)


async def _missed_cleanup(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    session = await _in_grace(m, d)
    session._cleanups = 0
    return check_session(m, session)


async def _dead_timer(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    session = await _in_grace(m, d)
    (timer,) = InternalView(m).timers(session)
    timer.cancel()
    return check_session(m, session)


async def _stray_timer(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice", active=True)
    session = await _session(m)
    record(session).timers = (asyncio.get_running_loop().call_later(1, lambda: None),)
    return check_session(m, session)


async def _tracks_in_grace(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    session = await _in_grace(m, d)
    session._tracks = {"TR_stale"}
    return check_session(m, session)


async def _tracks_while_connecting(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice")
    session = await _session(m)
    session._tracks = {"TR_x"}
    return check_session(m, session)


async def _participant_in_grace(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    participant = d.connect("bob")
    session = await _in_grace(m, d)
    session._participant = participant
    return check_session(m, session)


async def _pending_while_active(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    other = d.connect("bob")
    d.connect("alice", active=True)
    session = await _session(m)
    record(session).pending = other
    return check_session(m, session)


async def _not_stored(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice")
    session = await _session(m)
    del m._sessions["alice"]
    return check_session(m, session)


async def _stale_sid(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice")
    d.connect("bob")
    m._by_sid["PA_gone"] = await _session(m, "bob")
    return check_manager(m)


async def _removed_but_stored(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    session = await _in_grace(m, d)
    session._state = State.REMOVED
    return check_session(m, session)


async def _busy_when_idle(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice")
    m._runtime._busy.add(await _session(m))
    return check_manager(m, idle=True)


async def _phantom_track(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice", active=True)
    (await _session(m))._tracks = {"TR_never_published"}
    return check_manager(m, idle=True)


async def _open_manager(m: LifecycleManager, d: RoomDriver) -> list[Violation]:
    d.connect("alice")
    return check_closed(m)


CORRUPTIONS: dict[str, Corruption] = {
    "chart.state": _unknown_state,
    "chart.edge": _non_edge,
    "chart.path": _broken_path,
    "cleanups.bounded": _too_many_cleanups,
    "cleanups.exact": _missed_cleanup,
    "grace.timer": _dead_timer,
    "tracks.scope": _tracks_in_grace,
    "tracks.connecting": _tracks_while_connecting,
    "participant.scope": _participant_in_grace,
    "pending.scope": _pending_while_active,
    "index.sessions": _not_stored,
    "index.sid": _stale_sid,
    "removed.forgotten": _removed_but_stored,
    "idle.settled": _busy_when_idle,
    "tracks.mirror": _phantom_track,
    "closed.empty": _open_manager,
}


def test_every_invariant_has_a_detection_test() -> None:
    assert set(CORRUPTIONS) == set(INVARIANTS)


def _detect(corrupt: Corruption) -> list[Violation]:
    async def main() -> list[Violation]:
        async with RoomDriver() as driver:
            manager = LifecycleManager(LifecycleConfig(grace_period=GRACE))
            manager.attach(driver.room)
            return await corrupt(manager, driver)

    return run(main)


@pytest.mark.parametrize("invariant", list(CORRUPTIONS))
def test_each_invariant_catches_its_violation(invariant: str) -> None:
    found = _detect(CORRUPTIONS[invariant])
    assert invariant in {v.invariant for v in found}, found
    assert all(v.invariant in INVARIANTS for v in found)


def test_a_stray_timer_outside_grace_is_a_violation() -> None:
    found = _detect(_stray_timer)
    assert [v.invariant for v in found] == ["grace.timer"]
    assert "active" in found[0].detail


def test_violations_are_raised_together_with_a_clear_message() -> None:
    raise_for([])  # nothing to report
    violations = [
        Violation("grace.timer", "alice", "in grace without a live timer"),
        Violation("closed.empty", None, "left after aclose(): tasks=1"),
    ]
    with pytest.raises(InvariantViolation) as caught:
        raise_for(violations)
    error = caught.value
    assert isinstance(error, AssertionError) and error.violations == tuple(violations)
    assert str(error) == (
        "2 lifecycle invariant(s) violated:\n"
        "  - grace.timer [alice]: in grace without a live timer\n"
        "  - closed.empty: left after aclose(): tasks=1"
    )


def test_the_checker_catches_a_violation_at_the_transition_that_causes_it() -> None:
    async def main() -> None:
        async with RoomDriver() as driver:
            manager = LifecycleManager(LifecycleConfig(grace_period=GRACE))
            checker = InvariantChecker(manager)

            def double_count(session: Session) -> None:
                session._cleanups += 1  # as if the cleanup had already been counted once

            manager.add_cleanup(double_count)
            manager.attach(driver.room)
            driver.connect("alice", active=True)
            driver.disconnect("alice")
            await manager.wait_for("alice", State.GRACE, 1)
            found = {(v.invariant, v.key) for v in checker.violations}
            assert ("cleanups.bounded", "alice") in found and ("cleanups.exact", "alice") in found
            with pytest.raises(InvariantViolation, match=r"cleanups\.bounded"):
                checker.raise_if_violated()
            checker.close()
            seen = len(checker.violations)
            driver.connect("bob", active=True)
            assert len(checker.violations) == seen  # no longer listening
            checker.violations.clear()
            manager._cleanup.callbacks.clear()
            await manager.aclose()

    run(main)


def test_the_docs_list_every_invariant() -> None:
    root = Path(__file__).parent.parent
    guarantees = (root / "docs" / "guarantees.md").read_text()
    module = (root / "src" / "livekit_lifecycle" / "invariants.py").read_text()
    for invariant in INVARIANTS:
        assert f"`{invariant}`" in guarantees, invariant
        assert re.search(rf"``{re.escape(invariant)}``\s", module), invariant


async def test_the_runtime_flag_logs_and_counts_violations(
    driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    manager = LifecycleManager(LifecycleConfig(check_invariants=True, grace_period=30))
    manager.attach(driver.room)
    driver.connect("alice", active=True)
    assert manager.stats["invariant_violations"] == 0
    session = manager.get("alice")
    assert session is not None
    session._cleanups = 5  # corrupt it: more cleanups than connections
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, 2)
    assert manager.stats["invariant_violations"] > 0
    records = [r for r in caplog.records if r.msg == "invariant.violated"]
    assert records and records[0].__dict__["invariant"] == "cleanups.bounded"
    await manager.aclose()
