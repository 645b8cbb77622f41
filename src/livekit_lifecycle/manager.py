"""The :class:`LifecycleManager`: one statechart-driven session per participant of a room.

This module is the documented façade and the shutdown. It wires composed
objects, one concept each (see docs/architecture.md):

- :class:`~._runtime.SessionRuntime`: the sessions, their queues, the chart's
  timers and activities (the chart given: :data:`~.statechart.PARTICIPANT_CHART`);
- :class:`~._intake.RoomIntake`: the room's handlers, turning room events into
  the runtime's inputs (the only object that knows room event names);
- :class:`~._cleanup.CleanupActivity`: the cleanup callbacks, the chart's
  ``cleanup`` activity;
- :class:`~._notify.Notifier`: ``on(...)`` listeners and ``wait_for`` waiters;
- :class:`~._persistence.Persistence`, only with a durable store;
- :class:`~._log.ManagerLog` and :class:`~._callbacks.Supervisor`: the log and
  counters, and the work ``idle()`` and the shutdown wait for, shared by all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from livekit import rtc

from ._callbacks import Outcome, Supervisor, call_bounded, contains_callable, describe
from ._cleanup import CleanupActivity, CleanupCallback, UserActivity, user_activity
from ._emitter import Listener, NotificationName
from ._events import Input, InputKind
from ._intake import RoomIntake
from ._log import ManagerLog
from ._notify import Notifier
from ._observer import Observer, Observers
from ._runtime import SessionRuntime
from .config import LifecycleConfig
from .invariants import check_session
from .session import Session
from .statechart import PARTICIPANT_CHART, State, Statechart

if TYPE_CHECKING:
    from ._persistence import ConversationStore

__all__ = ["CleanupCallback", "LifecycleManager"]

F = TypeVar("F", bound=Callable[..., Any])
_SHUTDOWN_SLACK = 0.05
"""Seconds past the shutdown deadline for self-bounded work to finish its bookkeeping."""


class LifecycleManager:
    """Tracks every user of a ``livekit.rtc.Room`` through the participant statechart.

    Attach it to a room; each participant (of a tracked kind) gets a
    :class:`Session` keyed by ``config.session_key`` (identity by default)
    that moves connecting → active → disconnecting → cleaned → grace →
    removed, or back through reconnected when the user returns inside the
    grace window. Cleanup callbacks run exactly once per connection; events
    for a session are processed in order; sessions never wait on each other.

    Use it as an async context manager or call :meth:`aclose` for a graceful
    shutdown. All methods must be called from the room's event loop.
    """

    def __init__(
        self,
        config: LifecycleConfig | None = None,
        *,
        chart: Statechart = PARTICIPANT_CHART,
        activities: Mapping[str, UserActivity] | None = None,
    ) -> None:
        """``chart`` and ``activities`` are for a variant of the participant chart
        (docs/concepts.md, "Adding a state or an input"): ``activities`` implements each
        activity the chart declares besides ``cleanup`` (the cleanup callbacks), as
        ``fn(session)``, sync or async, isolated and bounded by ``cleanup_timeout``.

        Raises:
            TypeError: for a ``config`` that is not a :class:`LifecycleConfig`.
            ValueError: for a chart activity without an implementation.
        """
        if config is not None and not isinstance(config, LifecycleConfig):
            raise TypeError(f"config must be a LifecycleConfig, got {type(config).__name__}")
        self._config = config = config or LifecycleConfig()
        self._log = log = ManagerLog(lambda: None)
        self._stats = log.stats
        self._supervisor = supervisor = Supervisor(config.cleanup_timeout)
        self._notifier = notifier = Notifier(chart, log, supervisor)
        self._cleanup = cleanup = CleanupActivity(log, supervisor)
        self._observer: Observer = Observer()
        self._resources: list[tuple[str, Callable[[], Any]]] = []
        self._close_task: asyncio.Task[None] | None = None
        self._shutdown_limit: Callable[[int], float] | None = None
        persist = None
        if config.store.durable:
            from ._persistence import Persistence

            persist = Persistence(config, log, supervisor)
        self._persist = persist
        self._runtime = runtime = SessionRuntime(
            chart,
            config,
            log=log,
            supervisor=supervisor,
            events=notifier,
            activities={
                **{
                    name: user_activity(name, fn, log, supervisor)
                    for name, fn in (activities or {}).items()
                },
                "cleanup": cleanup.run,
            },
            store=persist,
        )
        self._sessions = runtime.sessions
        self._by_sid = runtime.by_sid
        self._intake = intake = RoomIntake(
            config, log, runtime, on_room_disconnected=self._start_close
        )
        runtime.wire(route=intake.route, on_bound=intake.adopt)
        log.room_name = intake.room_name
        if config.check_invariants:
            runtime.check_with(self._check_invariants)
        if persist is not None:
            persist.bind(runtime, intake)
            intake.persist = persist
            runtime.add_transition_hook(persist.written)
            cleanup.use_claims(persist.claims, runtime.set_cleanup_claim, runtime.resume)

    def _add_observer(self, observer: Observer) -> None:
        """Seam for metrics and tracing: ``observer`` is told about cleanups and shutdowns."""
        self._observer = Observers.combine(self._observer, observer)
        self._cleanup.observer = self._observer

    def _check_invariants(self, session: Session) -> None:
        for violation in check_session(self, session, self._runtime.chart):
            self._stats["invariant_violations"] += 1
            self._log.session(
                logging.ERROR,
                "invariant.violated",
                "session",
                session,
                invariant=violation.invariant,
                detail=violation.detail,
            )

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> LifecycleConfig:
        return self._config

    @property
    def room(self) -> rtc.Room | None:
        """The room this manager is attached to, if any."""
        return self._intake.room

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has started."""
        return self._runtime.closing

    @property
    def sessions(self) -> Mapping[str, Session]:
        """Live read-only view: session key -> :class:`Session` (removed ones are gone)."""
        return MappingProxyType(self._sessions)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: events seen, transitions, and every kind of input ignored or rejected."""
        return dict(self._stats)

    def attach(self, room: rtc.Room, *, adopt_later: bool = False) -> None:
        """Start tracking ``room``: register handlers and adopt participants already in it.

        The room may be connected or not yet. Participants already present
        get sessions (ACTIVE ones go straight to ``active``): at once, or with
        ``adopt_later`` on the event loop's next turn (before the room's next
        event), so listeners registered right after this call, before the
        caller's next ``await``, see their notifications too.

        Raises:
            RuntimeError: if already attached, or after :meth:`aclose`.
            TypeError: if ``room`` is not an ``rtc.Room``.
        """
        if self._runtime.closing:
            raise RuntimeError("cannot attach: this LifecycleManager is closed")
        if self._intake.room is not None:
            raise RuntimeError(
                "this LifecycleManager is already attached to a room; detach() first"
            )
        if not isinstance(room, rtc.Room):
            raise TypeError(f"attach() takes a livekit.rtc.Room, got {type(room).__name__}")
        self._intake.register(room, adopt_later=adopt_later)

    def detach(self) -> None:
        """Remove every handler from the room. Sessions and their timers are kept."""
        self._intake.unregister()

    def get(self, key: str) -> Session | None:
        """The live session stored under ``key``."""
        return self._sessions.get(key)

    def by_sid(self, sid: str) -> Session | None:
        """The live session whose latest connection has participant sid ``sid``."""
        return self._by_sid.get(sid)

    def state_of(self, key: str) -> State | None:
        """The state of the session under ``key`` (``None`` when there is none)."""
        session = self._sessions.get(key)
        return None if session is None else session._state

    def snapshot(self) -> dict[str, Any]:
        """Every live session as JSON-serialisable data, keyed by session key."""
        return {key: session.as_dict() for key, session in self._sessions.items()}

    def set_user_id(self, key_or_sid: str, user_id: str | None) -> Session:
        """Attach the application's user id to a session (looked up by key, then by sid).

        The user id is kept across reconnects inside the grace window.

        Raises:
            KeyError: if no live session has that key or sid.
            TypeError: if ``user_id`` is neither a string nor ``None``.
        """
        if user_id is not None and not isinstance(user_id, str):
            raise TypeError(f"user_id must be a str or None, got {type(user_id).__name__}")
        session = self._sessions.get(key_or_sid) or self._by_sid.get(key_or_sid)
        if session is None:
            raise KeyError(f"no live session with key or sid {key_or_sid!r}")
        self._runtime.set_user_id(session, user_id)
        self._log.session(logging.INFO, "session.user_id_set", "session", session, user_id=user_id)
        return session

    def add_cleanup(self, fn: F) -> F:
        """Register ``fn(session)`` (sync or async) to run once per ended connection.

        Callbacks run in registration order while the session is
        ``disconnecting``. Each is bounded by ``cleanup_timeout``; an
        exception or a timeout is logged and the lifecycle goes on. Usable
        as a decorator. Adding a callback already added (``self.cleanup``
        twice, equal ``functools.partial`` objects; see ``docs/concepts.md``) is a
        logged no-op: it still runs once.
        """
        if not callable(fn):
            raise TypeError(f"cleanup callback must be callable, got {fn!r}")
        callbacks = self._cleanup.callbacks
        if contains_callable(callbacks, fn):
            self._log.info("cleanup.already_added", "cleanup", callback=describe(fn))
            return fn
        callbacks.append(fn)
        return fn

    def add_resource(self, resource: object, name: str | None = None) -> None:
        """Close ``resource`` at shutdown, after every session; last added closes first.

        Accepts objects with ``aclose()`` or ``close()`` (sync or async) and
        plain callables. Each close is isolated and bounded. A resource
        already added (the same object, or an equal bound method or partial
        as its closer) is a logged no-op: it is closed once.
        """
        if self._runtime.closing:
            raise RuntimeError("cannot add a resource: this LifecycleManager is closed")
        closer: Callable[[], Any]
        if callable(getattr(resource, "aclose", None)):
            closer = resource.aclose  # type: ignore[attr-defined]
        elif callable(getattr(resource, "close", None)):
            closer = resource.close  # type: ignore[attr-defined]
        elif callable(resource):
            closer = resource
        else:
            raise TypeError(
                f"resource {resource!r} has no aclose() or close() method and is not callable"
            )
        if contains_callable((added for _, added in self._resources), closer):
            self._log.info(
                "resource.already_added", "shutdown", resource=name or describe(resource)
            )
            return
        self._resources.append((name or describe(resource), closer))

    @overload
    def on(self, event: NotificationName, callback: None = None) -> Callable[[F], F]: ...
    @overload
    def on(self, event: NotificationName, callback: F) -> F: ...
    def on(self, event: NotificationName, callback: Listener | None = None) -> Any:
        """Listen to ``state_changed(session, transition)``, ``created(session)``,
        ``reconnected(session)`` or ``removed(session)``.

        Like livekit's ``EventEmitter.on``: returns the callback, or a
        decorator when no callback is given. Sync listeners run inline;
        async ones run as tasks bounded by ``cleanup_timeout``. A failing
        listener is logged and never affects the lifecycle.
        """
        if callback is None:

            def decorator(fn: F) -> F:
                self._notifier.listeners.add(event, fn, once=False)
                return fn

            return decorator
        self._notifier.listeners.add(event, callback, once=False)
        return callback

    def once(self, event: NotificationName, callback: Listener) -> Listener:
        """Like :meth:`on`, for the next notification only."""
        self._notifier.listeners.add(event, callback, once=True)
        return callback

    def off(self, event: NotificationName, callback: Listener) -> None:
        """Remove a listener added with :meth:`on` or :meth:`once`."""
        self._notifier.listeners.remove(event, callback)

    async def wait_for(self, key: str, state: State | str, timeout: float | None = None) -> Session:
        """Wait until the session under ``key`` is in ``state`` (now or later).

        A session that was already removed before the call is not seen: wait
        for ``removed`` before (or while) causing the removal.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first.
            ValueError: for an unknown state.
            RuntimeError: when the manager shuts down first.
        """
        target = self._runtime.state(state)
        session = self._sessions.get(key)
        if session is not None and session._state is target:
            return session
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        all_waiters = self._notifier.waiters
        waiters = all_waiters.setdefault(key, [])
        entry = (target, future)
        waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"session {key!r} did not reach {target.value} within {timeout}s"
                f" (now: {self.state_of(key)})"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(entry)
            if not waiters and all_waiters.get(key) is waiters:
                del all_waiters[key]

    async def idle(self) -> None:
        """Wait until no event is queued or being processed for any session.

        Grace timers are not waited for: a session in ``grace`` is idle.
        """
        me = asyncio.current_task()
        tasks = self._supervisor.tasks
        while pending := {task for task in tasks if task is not me}:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Graceful shutdown; idempotent, and concurrent callers all wait for the one shutdown.

        Stops reacting to room events, cleans every session that has not
        been cleaned (concurrently, each callback bounded), marks every
        session removed, closes resources in reverse order, then clears all
        state. The whole takes at most ``shutdown_timeout`` seconds (plus
        resources, which are always asked to close).
        """
        if self._close_task is None:
            self._start_close()
        assert self._close_task is not None
        # Shielded: a caller that is cancelled (or times out) stops waiting,
        # but the one shutdown always runs to the end.
        await asyncio.shield(self._close_task)

    def _set_shutdown_limit(self, limit: Callable[[int], float]) -> None:
        """Seam for an integration that owns a shutdown budget (:mod:`.agents`).

        When the shutdown starts (``aclose()`` or the room's ``disconnected``),
        ``limit(resource_count)`` gives the most seconds it may take; a limit
        below ``config.shutdown_timeout`` replaces it in :attr:`config`.
        """
        self._shutdown_limit = limit

    def _conversation_store(self) -> ConversationStore | None:
        """Seam for the livekit-agents integration (:mod:`._conversation`): where a linked
        AgentSession's conversation is written and read back; ``None`` without a durable store."""
        return self._persist

    def _start_close(self) -> None:
        limit = self._shutdown_limit
        if limit is not None:
            # Fitted when the shutdown starts: resources may have been added since.
            seconds = limit(len(self._resources))
            if seconds < self._config.shutdown_timeout:
                self._config = dataclasses.replace(self._config, shutdown_timeout=seconds)
        self._runtime.closing = True
        self._close_task = asyncio.get_running_loop().create_task(
            self._shutdown(), name="livekit-lifecycle:aclose"
        )

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        supervisor = self._supervisor
        deadline = supervisor.deadline = started + self._config.shutdown_timeout
        sessions = list(self._sessions.values())
        self._log.info("shutdown.started", "shutdown", sessions=len(sessions))
        self._observer.shutdown_started(len(sessions))  # observability hook
        timed_out = False
        self.detach()
        if self._persist is not None:
            self._persist.stop_restoring()
        for session in sessions:
            self._runtime.feed(session, Input(InputKind.SHUTDOWN, session._key))
        me = asyncio.current_task()
        while pending := {task for task in supervisor.tasks if task is not me}:
            remaining = deadline - loop.time()
            if remaining <= 0:
                # Callbacks are bounded by the same deadline, so runners end
                # right after it; only a runner stuck outside a callback
                # (a blocking sync callback) is still here after the slack.
                _, pending = await asyncio.wait(pending, timeout=_SHUTDOWN_SLACK)
                if pending:
                    timed_out = True
                    supervisor.cancelling = True
                    self._log.error(
                        "shutdown.timeout",
                        "shutdown",
                        pending_tasks=len(pending),
                        stuck_sessions=sorted(self._sessions),
                    )
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending, timeout=_SHUTDOWN_SLACK)
                break
            await asyncio.wait(pending, timeout=remaining)
        for session in list(self._sessions.values()):
            # Only a cancelled runner leaves a session behind; say so, then forget it.
            self._log.session(logging.ERROR, "shutdown.session_abandoned", "shutdown", session)
            self._runtime.abandon(session)
        if self._persist is not None:
            # Written before resources close: the store's client may be one of them.
            await self._persist.aclose(max(supervisor.callback_timeout(), 1.0))
        await self._close_resources()
        self._notifier.close()
        for future in list(supervisor.abandoned):
            future.cancel()
        self._observer.shutdown_ended(timed_out)  # observability hook
        self._log.info(
            "shutdown.done",
            "shutdown",
            sessions=len(sessions),
            resources=len(self._resources),
            duration=round(loop.time() - started, 6),
        )
        self._resources.clear()

    async def __aenter__(self) -> LifecycleManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _close_resources(self) -> None:
        for name, closer in reversed(self._resources):
            failed = False

            def report(outcome: Outcome, exc: BaseException | None, name: str = name) -> None:
                nonlocal failed
                failed = True
                key = "callback_timeouts" if outcome is Outcome.TIMED_OUT else "callback_errors"
                self._stats[key] += 1
                self._log.error(
                    "shutdown.resource_failed",
                    "shutdown",
                    resource=name,
                    outcome=outcome.value,
                    error=None if exc is None else f"{type(exc).__name__}: {exc}",
                )

            # Resources are always asked to close, even when sessions used up
            # the shutdown budget: a leaked TTS connection is worse than a late exit.
            supervisor = self._supervisor
            timeout = max(supervisor.callback_timeout(), min(self._config.cleanup_timeout, 1.0))
            await call_bounded(closer, (), timeout, report, supervisor.abandoned)
            if not failed:
                self._log.info("shutdown.resource_closed", "shutdown", resource=name)
