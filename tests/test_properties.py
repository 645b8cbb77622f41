"""Property-based tests: hypothesis drives random interleavings against a real Room.

:class:`LifecycleMachine` is a ``RuleBasedStateMachine``. Each example gets a
fresh virtual-time event loop (``livekit_lifecycle.testing.virtual_time``), a real ``rtc.Room``
fed through ``RoomDriver`` and a real manager. Rules: connections joining
(a second one for a user is a takeover: identities ``u0#1``, ``u0#2`` share
the session key ``u0``), refreshes, activation, track publish/unpublish,
disconnects with every ``DisconnectReason``, duplicate and stale events, the
room's resume (``reconnecting``/``reconnected``) and full reconnect, slow,
failing, self-cancelling, hanging and cancellation-ignoring cleanup callbacks,
releasing slow ones, time passing (grace expiry, cleanup timeouts), the
application setting user ids, and shutdown at any point (``aclose()`` or the
room disconnecting).

After every step: every invariant of :mod:`livekit_lifecycle.invariants`; a
user id is kept exactly while the session lives; grace expires exactly
``grace_period`` after it opened, a reconnect only comes inside the window, a
connect to a key in ``grace`` reconnects it and a connect to a free key
starts fresh; a session is released without grace only for a no-grace reason
or at shutdown; a takeover only ever hands the session to a *newer*
connection. At the end (after ``aclose()``): every connection bound to a
session was cleaned exactly once and every cleanup callback ran exactly once
for it; no session, timer, task, waiter or abandoned callback is left; the
shutdown took at most ``shutdown_timeout`` (plus its documented slack).

Budget: the ``ci`` hypothesis profile (fixed, derandomized; see
``tests/conftest.py``); ``LIVEKIT_LIFECYCLE_HYPOTHESIS_PROFILE=long`` for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from livekit import rtc

from livekit_lifecycle import (
    DEFAULT_NO_GRACE_REASONS,
    LifecycleConfig,
    LifecycleManager,
    Session,
    State,
    Transition,
)
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.invariants import (
    InvariantChecker,
    check_closed,
    check_manager,
    raise_for,
)
from livekit_lifecycle.log import LOGGER_NAME
from livekit_lifecycle.manager import _SHUTDOWN_SLACK
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import VirtualTimeLoop, run

T = TypeVar("T")

USERS = ("u0", "u1", "u2")
GRACE = 30.0
CLEANUP_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 20.0
HANGING_RESOURCES = 1
SHUTDOWN_BOUND = (
    SHUTDOWN_TIMEOUT + 2 * _SHUTDOWN_SLACK + HANGING_RESOURCES * min(CLEANUP_TIMEOUT, 1.0)
)
"""aclose() bound: the cleanup phase, its slack, then each resource's floor (configuration.md)."""
SETTLE_ROUNDS = 50
MODES = ("sync", "async", "fail_sync", "fail_async", "cancel_self", "slow", "hang", "stubborn")
"""What the first cleanup callback does for a connection (chosen when it joins)."""
REASONS = tuple(sorted(rtc.DisconnectReason.values()))
ADVANCES = (0.5, CLEANUP_TIMEOUT, GRACE - 1.0, GRACE, GRACE + 1.0)
BINDS = ("rejoin", "reconnect")


def session_key(participant: rtc.RemoteParticipant) -> str:
    """``u0#3`` -> ``u0``: every connection of a user shares one session key."""
    return participant.identity.split("#")[0]


class LifecycleMachine(RuleBasedStateMachine):
    """Random interleavings of room events, callbacks, time and shutdown; properties checked."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.ids = itertools.count(1)
        self.user_ids = itertools.count(1)
        self.modes: dict[str, str] = {}
        self.gates: list[asyncio.Event] = []
        self.gates_open = False
        self.join_order: dict[int, int] = {}
        self.participants: list[rtc.RemoteParticipant] = []
        self.departed: list[rtc.RemoteParticipant] = []
        self.bound: Counter[str] = Counter()
        self.cleaned: Counter[str] = Counter()
        self.calls_a: Counter[str] = Counter()
        self.calls_b: Counter[str] = Counter()
        self.expected_user: dict[str, str] = {}
        self.live: dict[str, Session] = {}
        self.hold_at: dict[int, float] = {}
        self.seen: list[Session] = []
        self.problems: list[str] = []
        self.closing = False
        self.close_task: asyncio.Future[None] | None = None
        self.close_started = 0.0
        self.close_done: float | None = None
        self.records: list[logging.LogRecord] = []
        self.log_handler = _Collector(self.records)
        self.logger = logging.getLogger(LOGGER_NAME)
        self.old_level = self.logger.level
        self.logger.addHandler(self.log_handler)
        self.logger.setLevel(logging.WARNING)
        self.driver, self.manager, self.checker = self.run(self._setup())

    # ------------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> tuple[RoomDriver, LifecycleManager, InvariantChecker]:
        driver = RoomDriver("prop-room")
        manager = LifecycleManager(
            LifecycleConfig(
                grace_period=GRACE,
                cleanup_timeout=CLEANUP_TIMEOUT,
                shutdown_timeout=SHUTDOWN_TIMEOUT,
                session_key=session_key,
            )
        )
        checker = InvariantChecker(manager)
        manager.on("created", self._on_created)
        manager.on("state_changed", self._on_transition)
        manager.on("removed", self._on_removed)
        manager.add_cleanup(self._cleanup_a)
        manager.add_cleanup(self._cleanup_b)
        manager.add_resource(lambda: None, name="ok")
        manager.add_resource(_failing_close, name="failing")
        manager.add_resource(_hanging_close, name="hanging")
        # Registered before the manager's handlers, so a connection is known
        # (and ordered) before the manager reacts to it.
        driver.room.on("participant_connected", self.joined)
        manager.attach(driver.room)
        return driver, manager, checker

    async def _settle(self) -> None:
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    def act(self, action: Callable[[], T]) -> T:
        """Do ``action`` inside the running loop (as the SDK emits), then let tasks run."""

        async def go() -> T:
            result = action()
            await self._settle()
            return result

        return self.run(go())

    def now(self) -> float:
        return self.loop.time()

    def joined(self, participant: rtc.RemoteParticipant) -> None:
        if id(participant) not in self.join_order:
            self.participants.append(participant)  # kept alive: ids stay unique
            self.join_order[id(participant)] = len(self.join_order)

    def present(self) -> list[rtc.RemoteParticipant]:
        return list(self.driver.room.remote_participants.values())

    def several_connections_of_one_user(self) -> bool:
        keys = [session_key(p) for p in self.present()]
        return len(keys) != len(set(keys))

    def connect_queued(self) -> bool:
        return any(
            inp.kind == "participant_connected"
            for session in self.manager.sessions.values()
            if session._record is not None
            for inp in session._record.queue or ()
        )

    # ------------------------------------------------------------------ callbacks and listeners

    def _cleanup_a(self, session: Session) -> Coroutine[Any, Any, None] | None:
        # Synchronous on purpose: the call is counted even when the
        # coroutine it returns never gets to run (timeout 0 past the deadline).
        self.calls_a[session.sid] += 1
        participant = session.participant
        if session.state is not State.DISCONNECTING or participant is None:
            self.problems.append(f"cleanup saw {session!r} with participant {participant}")
        elif participant.sid != session.sid:
            self.problems.append(f"cleanup of {session.sid} saw participant {participant.sid}")
        mode = self.modes.get(session.sid, "sync")
        if mode == "sync":
            return None
        if mode == "fail_sync":
            raise RuntimeError(f"cleanup of {session.sid} failed")
        return self._async_cleanup(mode)

    async def _async_cleanup(self, mode: str) -> None:
        if mode == "async":
            await asyncio.sleep(0)
        elif mode == "fail_async":
            await asyncio.sleep(0)
            raise RuntimeError("async cleanup failed")
        elif mode == "cancel_self":
            raise asyncio.CancelledError
        elif mode == "slow" and not self.gates_open:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        elif mode == "hang":
            await asyncio.Event().wait()
        elif mode == "stubborn":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # ignores the timeout's cancellation ...
            # ... then waits until aclose() cancels it again
            await asyncio.Event().wait()

    def _cleanup_b(self, session: Session) -> None:
        self.calls_b[session.sid] += 1

    def _on_created(self, session: Session) -> None:
        self.bound[session.sid] += 1
        self.seen.append(session)
        if self.live.get(session.key) is not None:
            self.problems.append(f"second live session for {session.key}")
        if self.manager.closed:
            self.problems.append(f"session {session.key} created during shutdown")
        if session.user_id is not None:
            self.problems.append(f"fresh session {session.key} has user {session.user_id}")
        self.live[session.key] = session

    def _on_removed(self, session: Session) -> None:
        if self.live.pop(session.key, None) is not session:
            self.problems.append(f"removed {session!r} was not the live session of its key")
        self.expected_user.pop(session.key, None)

    def _on_transition(self, session: Session, transition: Transition) -> None:
        trigger, now = transition.trigger, self.now()
        if trigger in BINDS:
            self.bound[session.sid] += 1
        elif trigger == "cleanup_done":
            self.cleaned[transition.sid] += 1
        elif trigger == "hold":
            self.hold_at[id(session)] = now
        elif trigger == "expire":
            waited = now - self.hold_at[id(session)]
            if abs(waited - GRACE) > 1e-6:
                self.problems.append(f"{session.key} expired after {waited}s, not {GRACE}s")
        elif trigger == "release":
            reason = session.disconnect_reason
            if not self.manager.closed and reason not in DEFAULT_NO_GRACE_REASONS:
                self.problems.append(f"{session.key} released without grace, reason {reason}")
        elif trigger == "shutdown" and not (self.manager.closed and self.closing):
            self.problems.append(f"{session.key} shut down while the manager is open")
        elif trigger == "takeover":
            old, new = session.participant, InternalView(self.manager).pending(session)
            if old is None or new is None:
                self.problems.append(f"takeover of {session.key} without both connections")
            elif self.join_order.get(id(new), -1) < self.join_order.get(id(old), -1):
                self.problems.append(
                    f"takeover of {session.key} by the older connection {new.identity}"
                    f" (bound: {old.identity})"
                )
        if transition.dest is State.RECONNECTED and trigger == "reconnect":
            opened = self.hold_at.get(id(session))
            if opened is None or now - opened >= GRACE:
                self.problems.append(f"{session.key} reconnected outside the grace window")

    # ------------------------------------------------------------------ rules: room events

    @initialize(
        modes=st.lists(st.sampled_from(MODES), min_size=2, max_size=2),
        active=st.booleans(),
    )
    def two_users_join(self, modes: list[str], active: bool) -> None:
        """Every example starts with users in the room (an empty room teaches nothing)."""
        for user, mode in zip(USERS, modes, strict=False):
            self.connect(user, active, mode)

    @rule(
        user=st.sampled_from(USERS),
        active=st.booleans(),
        mode=st.sampled_from(MODES),
    )
    def connect(self, user: str, active: bool, mode: str) -> None:
        """A new connection for ``user``: a join, a reconnect, or a takeover."""
        sid = self.driver.new_sid()
        self.modes[sid] = mode
        prior = self.manager.get(user)
        prior_state = None if prior is None else prior.state
        identity = f"{user}#{next(self.ids)}"
        self.act(lambda: self.driver.connect(identity, sid=sid, active=active))
        if self.manager.closed:
            return
        current = self.manager.get(user)
        if prior_state is State.GRACE:
            # Inside the window (the timer has not fired): the same session, re-bound.
            assert current is prior and current is not None and current.sid == sid, current
        elif prior is None:
            assert current is not None and current.sid == sid and current.user_id is None
        elif prior_state in (State.CONNECTING, State.ACTIVE):
            assert current is prior  # a takeover: the same session, re-bound after cleanup
        # Behind a running cleanup the connect waits its turn: the transition
        # listener checks the reconnect (or fresh start) when it happens.

    @precondition(lambda self: self.present())
    @rule(
        data=st.data(),
        reason=st.sampled_from(REASONS),
        active=st.booleans(),
        mode=st.sampled_from(MODES),
    )
    def refresh(self, data: st.DataObject, reason: int, active: bool, mode: str) -> None:
        """A page reload: the connection leaves (any reason) and joins again, new sid."""
        identity = data.draw(st.sampled_from(self.present())).identity
        sid = self.driver.new_sid()
        self.modes[sid] = mode

        def reload() -> rtc.RemoteParticipant:
            self.departed.append(self.driver.disconnect(identity, reason))
            return self.driver.connect(identity, sid=sid, active=active)

        self.act(reload)

    @precondition(lambda self: self.present())
    @rule(data=st.data())
    def activate(self, data: st.DataObject) -> None:
        """participant_active (again, for one that already is: a duplicate)."""
        identity = data.draw(st.sampled_from(self.present())).identity
        self.act(lambda: self.driver.activate(identity))

    @precondition(lambda self: self.present())
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        """track_published (for a superseded connection: a stale event)."""
        identity = data.draw(st.sampled_from(self.present())).identity
        self.act(lambda: self.driver.publish_track(identity))

    @precondition(lambda self: any(p.track_publications for p in self.present()))
    @rule(data=st.data())
    def unpublish(self, data: st.DataObject) -> None:
        publishing = [p for p in self.present() if p.track_publications]
        participant = data.draw(st.sampled_from(publishing))
        track = data.draw(st.sampled_from(sorted(participant.track_publications)))
        self.act(lambda: self.driver.unpublish_track(participant.identity, track))

    @precondition(lambda self: self.present())
    @rule(data=st.data(), reason=st.sampled_from(REASONS))
    def disconnect(self, data: st.DataObject, reason: int) -> None:
        identity = data.draw(st.sampled_from(self.present())).identity
        self.departed.append(self.act(lambda: self.driver.disconnect(identity, reason)))

    @precondition(lambda self: self.departed)
    @rule(data=st.data())
    def redeliver_disconnect(self, data: st.DataObject) -> None:
        """A participant_disconnected delivered again, late (a duplicate, or stale)."""
        participant = data.draw(st.sampled_from(self.departed))
        if participant.sid in {p.sid for p in self.present()}:
            # The agent's full reconnect re-announced this sid with a new
            # object: a late copy of the old object's disconnect would look
            # current. Not modelled (see docs/guarantees.md).
            return
        self.act(lambda: self.driver.redeliver_disconnect(participant))

    @precondition(lambda self: self.present())
    @rule(data=st.data())
    def duplicate_connected(self, data: st.DataObject) -> None:
        """participant_connected delivered twice for a connection the manager tracks."""
        participant = data.draw(st.sampled_from(self.present()))
        session = self.manager.by_sid(participant.sid)
        if session is None or session.participant is not participant:
            # The SDK never announces a participant twice (it raises "participant already
            # exists"); only an application forwarding events can, for one it tracks.
            # Re-announced superseded tabs are covered by the explicit tests below.
            return
        self.act(lambda: self.driver.room.emit("participant_connected", participant))

    @rule()
    def room_resume(self) -> None:
        """The agent's connection resumes: reconnecting, reconnected, no participant events."""

        def resume() -> None:
            self.driver.reconnecting()
            self.driver.reconnected()

        self.act(resume)

    @rule()
    def full_reconnect(self) -> None:
        """The agent's full reconnect: everyone disconnected, then back with the same sid."""
        self.departed += self.present()
        self.act(self.driver.full_reconnect)

    # ------------------------------------------------------------------ rules: time, app, shutdown

    @precondition(lambda self: self.gates)
    @rule(data=st.data())
    def release_slow_cleanup(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.gates) - 1))
        self.act(self.gates.pop(index).set)

    @rule(seconds=st.sampled_from(ADVANCES))
    def time_passes(self, seconds: float) -> None:
        """The clock moves: timers due in between fire in order (grace, cleanup timeouts)."""
        self.run(asyncio.sleep(seconds))
        self.act(lambda: None)

    @precondition(lambda self: self.manager.sessions)
    @rule(data=st.data())
    def set_user_id(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.manager.sessions)))
        user_id = f"{key}/user-{next(self.user_ids)}"
        self.act(lambda: self.manager.set_user_id(key, user_id))
        self.expected_user[key] = user_id

    @precondition(lambda self: not self.closing)
    @rule(via_room=st.booleans(), now=st.integers(0, 2))
    def shutdown(self, via_room: bool, now: int) -> None:
        """aclose(), or the room disconnecting (which runs aclose()), at any point."""
        if now:
            return  # a third as likely as other rules: steps after it are mostly ignored
        self.closing = True
        self.close_started = self.now()

        def close() -> asyncio.Future[None] | None:
            if via_room:
                self.driver.room_disconnected()
                return self.manager._close_task
            return asyncio.ensure_future(self.manager.aclose())

        self.close_task = self.act(close)
        assert self.close_task is not None
        self.close_task.add_done_callback(self._closed)

    def _closed(self, _: object) -> None:
        self.close_done = self.now()

    # ------------------------------------------------------------------ properties

    @invariant()
    def everything_holds(self) -> None:
        assert not self.problems, self.problems
        self.checker.raise_if_violated()
        raise_for(check_manager(self.manager))
        for key, session in self.manager.sessions.items():
            assert session.user_id == self.expected_user.get(key), (session, self.expected_user)
            assert self.live.get(key) is session
        for record in self.records:
            if record.msg in ("cleanup.failed", "cleanup.timeout"):
                assert record.__dict__.get("key") and record.__dict__.get("sid"), record.__dict__
            assert record.msg not in ("manager.internal_error", "shutdown.session_abandoned"), (
                record.msg,
                record.__dict__,
            )

    def teardown(self) -> None:
        try:
            self.run(self._finish())
        finally:
            self.logger.removeHandler(self.log_handler)
            self.logger.setLevel(self.old_level)
            self.driver.close()
            leftovers = asyncio.all_tasks(self.loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                self.run(asyncio.wait(leftovers))
            self.loop.close()

    async def _finish(self) -> None:
        self.gates_open = True
        for gate in self.gates:
            gate.set()
        if not self.closing:
            await self.manager.idle()  # the clock jumps over hanging cleanups
            raise_for(check_manager(self.manager, idle=True))
            self.closing = True
            self.close_started = self.now()
            self.close_task = asyncio.ensure_future(self.manager.aclose())
            self.close_task.add_done_callback(self._closed)
        assert self.close_task is not None
        await self.close_task
        await self._settle()
        assert self.close_done is not None
        took = self.close_done - self.close_started
        assert took <= SHUTDOWN_BOUND + 1e-9, f"aclose() took {took}s > {SHUTDOWN_BOUND}s"
        self.everything_holds()
        raise_for(check_closed(self.manager))
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, f"tasks leaked: {others}"
        assert not self.manager._supervisor.abandoned
        view = InternalView(self.manager)
        for session in self.seen:
            assert session.state is State.REMOVED, session
            assert view.timers(session) == () and session.participant is None, session
            assert not view.busy(session) and view.queued(session) == 0, session
        # Every connection bound to a session was cleaned exactly once, and
        # every cleanup callback ran exactly once for it.
        assert self.cleaned == self.bound, (self.bound, self.cleaned)
        assert self.calls_a == self.bound, (self.bound, self.calls_a)
        assert self.calls_b == self.bound, (self.bound, self.calls_b)
        failures = [r for r in self.records if r.msg == "shutdown.resource_failed"]
        assert sorted(r.__dict__["resource"] for r in failures) == ["failing", "hanging"]
        assert self.manager.stats["internal_errors"] == 0


class _Collector(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _failing_close() -> None:
    raise OSError("resource already broken")


async def _hanging_close() -> None:
    await asyncio.Event().wait()


TestLifecycleProperties = LifecycleMachine.TestCase


@pytest.mark.parametrize("announced_by", ["room resume", "duplicate participant_connected"])
def test_room_resume_never_hands_the_session_back_to_a_superseded_connection(
    announced_by: str,
) -> None:
    async def main() -> None:
        async with RoomDriver() as driver:
            manager = LifecycleManager(LifecycleConfig(grace_period=GRACE, session_key=session_key))
            cleaned: list[str] = []
            manager.add_cleanup(lambda s: cleaned.append(s.identity))
            manager.attach(driver.room)
            old_tab = driver.connect("u0#1", active=True)
            driver.connect("u0#2", active=True)  # the new tab; the old one has not left yet
            await manager.idle()
            session = manager.get("u0")
            assert session is not None and session.identity == "u0#2" and cleaned == ["u0#1"]
            if announced_by == "room resume":
                driver.reconnecting()
                driver.reconnected()
            else:
                driver.room.emit("participant_connected", old_tab)
            await manager.idle()
            triggers = [t.trigger for t in session.history]
            assert cleaned == ["u0#1"], f"live connections cleaned: {cleaned[1:]}"
            assert triggers.count("takeover") == 1 and session.identity == "u0#2", triggers
            await manager.aclose()

    run(main)
