"""The :class:`LifecycleManager`: one statechart-driven session per participant of a room."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from livekit import rtc

from ._callbacks import Outcome, call_bounded, describe
from ._emitter import Listener, Listeners, NotificationName
from ._events import Input, InputKind
from ._machine import EventData, build_machine
from .config import LifecycleConfig
from .log import LOGGER_NAME, get_logger
from .session import Session, Transition, reason_name
from .statechart import PARTICIPANT_CHART, State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from livekit.agents import AgentSession, JobContext

    from .agents import JobLifecycleManager

__all__ = ["CleanupCallback", "LifecycleManager"]

CleanupCallback = Callable[[Session], Any]
"""``fn(session)``, sync or async; called while the session is ``disconnecting``."""

F = TypeVar("F", bound=Callable[..., Any])
_CleanupBatch = tuple[list[Session], "asyncio.Future[None]"]
_ACTIVE = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
_CONNECTED_STATES = (State.CONNECTING, State.ACTIVE)
_SUPERSEDED_LIMIT = 16
"""Sids of replaced connections remembered per session (oldest forgotten first)."""
_SHUTDOWN_SLACK = 0.05
"""Seconds past the shutdown deadline for self-bounded work to finish its bookkeeping."""
_STATS = (
    "events",
    "transitions",
    "ignored_duplicate",
    "ignored_stale",
    "ignored_invalid",
    "ignored_kind",
    "ignored_after_close",
    "rejected_input",
    "callback_errors",
    "callback_timeouts",
    "internal_errors",
    "invariant_violations",
)


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

    def __init__(self, config: LifecycleConfig | None = None) -> None:
        if config is not None and not isinstance(config, LifecycleConfig):
            raise TypeError(f"config must be a LifecycleConfig, got {type(config).__name__}")
        self._config = config or LifecycleConfig()
        self._chart = PARTICIPANT_CHART
        self._sessions: dict[str, Session] = {}
        self._by_sid: dict[str, Session] = {}
        self._cleanups: list[CleanupCallback] = []
        self._async_cleanups = False
        """Whether a cleanup callback is a coroutine function (cleanup then runs in a task)."""
        self._resources: list[tuple[str, Callable[[], Any]]] = []
        self._listeners = Listeners()
        self._listening = self._listeners.by_name
        self._check_invariants_on = self._config.check_invariants
        self._waiters: dict[str, list[tuple[State, asyncio.Future[Session]]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        """Session runners, scheduled cleanups and async listeners: what idle() waits for."""
        self._cleanup_batch: _CleanupBatch | None = None
        """Sessions whose synchronous cleanup runs on the loop's next turn, and its future."""
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._room: rtc.Room | None = None
        self._last_room: rtc.Room | None = None
        self._handlers: list[tuple[str, Callable[..., None]]] = []
        self._reconcile_on_connect = False
        self._closing = False
        self._cancelling_runners = False
        self._close_task: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self._stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._log = get_logger()
        self._stdlog = logging.getLogger(LOGGER_NAME)
        self._machine = build_machine(
            self._chart,
            guards={
                "is_current_sid": self._guard_current_sid,
                "is_new_sid": self._guard_new_sid,
                "has_pending_connection": self._guard_pending,
                "grace_allowed": self._guard_grace_allowed,
                "is_current_timer": self._guard_current_timer,
                "participant_is_active": self._guard_participant_active,
            },
            effects={
                "publish_track": self._effect_publish_track,
                "unpublish_track": self._effect_unpublish_track,
                "disconnect": self._effect_disconnect,
                "takeover": self._effect_takeover,
                "shutdown": self._effect_shutdown,
                "cleanup_done": self._effect_cleanup_done,
                "reconnect": self._effect_reconnect,
                "rejoin": self._effect_rejoin,
            },
            on_enter={State.GRACE: self._enter_grace, State.REMOVED: self._enter_removed},
            on_exit={State.GRACE: self._exit_grace},
            after_state_change=self._after_state_change,
        )
        self._events = self._machine.events
        self._state_by_name = dict(State.__members__)
        self._sources = {
            trigger: frozenset(State[name] for name in event.transitions)
            for trigger, event in self._events.items()
        }
        self._automatic = {
            state: tuple(self._events[t] for t in self._chart.automatic_triggers(state))
            for state in self._chart.states
        }

    @classmethod
    async def for_job(
        cls,
        ctx: JobContext,
        *,
        session: AgentSession[Any] | None = None,
        config: LifecycleConfig | None = None,
        resources: Iterable[object] = (),
    ) -> JobLifecycleManager:
        """A manager for a livekit-agents job: see :func:`livekit_lifecycle.agents.for_job`.

        Needs the ``agents`` extra (``livekit-lifecycle[agents]``).
        """
        from .agents import for_job

        return await for_job(ctx, session=session, config=config, resources=resources)

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> LifecycleConfig:
        return self._config

    @property
    def room(self) -> rtc.Room | None:
        """The room this manager is attached to, if any."""
        return self._room

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has started."""
        return self._closing

    @property
    def sessions(self) -> Mapping[str, Session]:
        """Live read-only view: session key -> :class:`Session` (removed ones are gone)."""
        return MappingProxyType(self._sessions)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: events seen, transitions, and every kind of input ignored or rejected."""
        return dict(self._stats)

    def attach(self, room: rtc.Room) -> None:
        """Start tracking ``room``: register handlers and adopt participants already in it.

        The room may be connected or not yet. Participants already present
        get sessions (ACTIVE ones go straight to ``active``).

        Raises:
            RuntimeError: if already attached, or after :meth:`aclose`.
            TypeError: if ``room`` is not an ``rtc.Room``.
        """
        if self._closing:
            raise RuntimeError("cannot attach: this LifecycleManager is closed")
        if self._room is not None:
            raise RuntimeError(
                "this LifecycleManager is already attached to a room; detach() first"
            )
        if not isinstance(room, rtc.Room):
            raise TypeError(f"attach() takes a livekit.rtc.Room, got {type(room).__name__}")
        self._room = room
        self._last_room = room
        # Room.connect() fills remote_participants without emitting events, so
        # a room attached before it connects is reconciled once it has.
        self._reconcile_on_connect = not room.isconnected()
        self._handlers = [
            ("participant_connected", _room_handler(self._submit, InputKind.CONNECTED)),
            ("participant_active", _room_handler(self._submit, InputKind.ACTIVE)),
            ("participant_disconnected", _room_handler(self._submit, InputKind.DISCONNECTED)),
            ("track_published", _room_handler(self._on_track, InputKind.TRACK_PUBLISHED)),
            ("track_unpublished", _room_handler(self._on_track, InputKind.TRACK_UNPUBLISHED)),
            ("reconnecting", _room_handler(self._on_room_reconnecting)),
            ("reconnected", _room_handler(self._on_room_reconnected)),
            ("disconnected", _room_handler(self._on_room_disconnected)),
            ("connection_state_changed", _room_handler(self._on_connection_state_changed)),
        ]
        for name, handler in self._handlers:
            room.on(name, handler)  # type: ignore[arg-type]
        self._info("handlers.registered", "handlers", events=[n for n, _ in self._handlers])
        self._reconcile()

    def detach(self) -> None:
        """Remove every handler from the room. Sessions and their timers are kept."""
        room = self._room
        if room is None:
            return
        for name, handler in self._handlers:
            room.off(name, handler)  # type: ignore[arg-type]
        self._handlers = []
        self._info("handlers.removed", "handlers")
        self._room = None

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
        session._user_id = user_id
        self._log_session(logging.INFO, "session.user_id_set", "session", session, user_id=user_id)
        return session

    def add_cleanup(self, fn: F) -> F:
        """Register ``fn(session)`` (sync or async) to run once per ended connection.

        Callbacks run in registration order while the session is
        ``disconnecting``. Each is bounded by ``cleanup_timeout``; an
        exception or a timeout is logged and the lifecycle goes on. Usable
        as a decorator.
        """
        if not callable(fn):
            raise TypeError(f"cleanup callback must be callable, got {fn!r}")
        self._cleanups.append(fn)
        if inspect.iscoroutinefunction(fn):
            self._async_cleanups = True
        return fn

    def add_resource(self, resource: object, name: str | None = None) -> None:
        """Close ``resource`` at shutdown, after every session; last added closes first.

        Accepts objects with ``aclose()`` or ``close()`` (sync or async) and
        plain callables. Each close is isolated and bounded.
        """
        if self._closing:
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
                self._listeners.add(event, fn, once=False)
                return fn

            return decorator
        self._listeners.add(event, callback, once=False)
        return callback

    def once(self, event: NotificationName, callback: Listener) -> Listener:
        """Like :meth:`on`, for the next notification only."""
        self._listeners.add(event, callback, once=True)
        return callback

    def off(self, event: NotificationName, callback: Listener) -> None:
        """Remove a listener added with :meth:`on` or :meth:`once`."""
        self._listeners.remove(event, callback)

    async def wait_for(self, key: str, state: State | str, timeout: float | None = None) -> Session:
        """Wait until the session under ``key`` is in ``state`` (now or later).

        A session that was already removed before the call is not seen: wait
        for ``removed`` before (or while) causing the removal.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first.
            ValueError: for an unknown state.
            RuntimeError: when the manager shuts down first.
        """
        target = State(state)
        session = self._sessions.get(key)
        if session is not None and session._state is target:
            return session
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
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
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]

    async def idle(self) -> None:
        """Wait until no event is queued or being processed for any session.

        Grace timers are not waited for: a session in ``grace`` is idle.
        """
        me = asyncio.current_task()
        while pending := {task for task in self._tasks if task is not me}:
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

    def _start_close(self) -> None:
        self._closing = True
        self._close_task = asyncio.get_running_loop().create_task(
            self._shutdown(), name="livekit-lifecycle:aclose"
        )

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._deadline = started + self._config.shutdown_timeout
        sessions = list(self._sessions.values())
        self._info("shutdown.started", "shutdown", sessions=len(sessions))
        self.detach()
        for session in sessions:
            self._feed(session, Input(InputKind.SHUTDOWN, session._key))
        me = asyncio.current_task()
        while pending := {task for task in self._tasks if task is not me}:
            remaining = self._deadline - loop.time()
            if remaining <= 0:
                # Callbacks are bounded by the same deadline, so runners end
                # right after it; only a runner stuck outside a callback
                # (a blocking sync callback) is still here after the slack.
                _, pending = await asyncio.wait(pending, timeout=_SHUTDOWN_SLACK)
                if pending:
                    self._cancelling_runners = True
                    self._log.error(
                        "shutdown.timeout",
                        category="shutdown",
                        room=self._room_name(),
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
            self._log_session(logging.ERROR, "shutdown.session_abandoned", "shutdown", session)
            self._forget(session)
        await self._close_resources()
        for waiters in self._waiters.values():
            for _, future in waiters:
                if not future.done():
                    future.set_exception(RuntimeError("LifecycleManager closed"))
        self._waiters.clear()
        for future in list(self._abandoned):
            future.cancel()
        self._info(
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

    # ------------------------------------------------------------------ room handlers

    def _on_track(
        self,
        kind: InputKind,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
        *_: object,
    ) -> None:
        self._submit(kind, participant, publication=publication)

    def _on_connection_state_changed(self, state: int) -> None:
        if state == rtc.ConnectionState.CONN_CONNECTED:
            self._catch_up()

    def _catch_up(self) -> None:
        """Adopt the participants ``Room.connect()`` added silently, once."""
        room = self._room
        if self._reconcile_on_connect and room is not None and room.isconnected():
            self._reconcile_on_connect = False
            self._reconcile()

    def _on_room_reconnecting(self) -> None:
        self._info("room.reconnecting", "connect")

    def _on_room_reconnected(self) -> None:
        self._info("room.reconnected", "connect")
        self._reconcile()

    def _on_room_disconnected(self, reason: int | None = None) -> None:
        self._info("room.disconnected", "shutdown", reason=reason_name(reason))
        if self._config.close_on_room_disconnect and not self._closing:
            self._start_close()

    # ------------------------------------------------------------------ input routing

    def _submit(
        self,
        kind: InputKind,
        participant: rtc.RemoteParticipant,
        *_: object,
        publication: rtc.RemoteTrackPublication | None = None,
    ) -> None:
        """Translate one room event into an :class:`Input` and route it. Never raises.

        The participant events' room handler (positional arguments a newer
        SDK might add are ignored).
        """
        self._stats["events"] += 1
        if self._reconcile_on_connect:
            self._catch_up()
        if self._closing:
            self._stats["ignored_after_close"] += 1
            self._debug("event.ignored", "handlers", input=kind.value, why="manager closed")
            return
        try:
            if participant.kind not in self._config.kinds:
                self._stats["ignored_kind"] += 1
                self._debug(
                    "event.ignored",
                    "handlers",
                    input=kind.value,
                    identity=participant.identity,
                    why=f"participant kind {participant.kind} is not tracked",
                )
                return
            sid = participant.sid
            if not sid:
                self._reject(kind, participant, "participant has no sid")
                return
            session = None if kind is InputKind.CONNECTED else self._by_sid.get(sid)
            key = session._key if session is not None else self._key_of(kind, participant)
            if key is None:
                return
            reason = participant.disconnect_reason if kind is InputKind.DISCONNECTED else None
            inp = Input(
                kind,
                key,
                sid=sid,
                participant=participant,
                reason=reason,
                track_sid="" if publication is None else publication.sid,
            )
        except Exception as exc:
            self._reject(kind, participant, f"{type(exc).__name__}: {exc}")
            return
        if session is None:
            self._route(inp)
        else:  # what _route would find: the session bound to this sid
            self._feed(session, inp)

    def _key_of(self, kind: InputKind, participant: rtc.RemoteParticipant) -> str | None:
        try:
            key = self._config.key_of(participant)
        except Exception as exc:
            self._reject(kind, participant, f"session_key raised {type(exc).__name__}: {exc}")
            return None
        if not isinstance(key, str) or not key:
            self._reject(kind, participant, f"empty or non-string session key {key!r}")
            return None
        return key

    def _reject(self, kind: InputKind, participant: object, why: str) -> None:
        self._stats["rejected_input"] += 1
        self._log.warning(
            "event.rejected",
            category="handlers",
            room=self._room_name(),
            input=kind.value,
            identity=getattr(participant, "identity", None),
            sid=getattr(participant, "sid", None),
            why=why,
        )

    def _route(self, inp: Input) -> None:
        session = self._sessions.get(inp.key)
        if inp.kind is InputKind.CONNECTED:
            if session is None:
                if self._closing:
                    # Queued behind a cleanup when shutdown began: too late to start a session.
                    self._stats["ignored_after_close"] += 1
                    self._debug("event.ignored", "connect", key=inp.key, why="manager closed")
                    return
                assert inp.participant is not None
                self._create(inp.key, inp.participant)
            else:
                self._feed(session, inp)
            return
        if inp.kind in (InputKind.EXPIRE, InputKind.SHUTDOWN):
            return  # addressed to a session that no longer exists
        found = self._by_sid.get(inp.sid) or session
        if found is None:
            self._stats["ignored_stale"] += 1
            self._debug(
                "event.ignored",
                _CATEGORY[inp.kind],
                input=inp.kind.value,
                key=inp.key,
                sid=inp.sid,
                why="no session for this participant",
            )
            return
        self._feed(found, inp)

    def _create(self, key: str, participant: rtc.RemoteParticipant) -> None:
        session = Session(key, participant, self._config.history_limit, time.time())
        self._sessions[key] = session
        self._by_sid[session._sid] = session
        if self._stdlog.isEnabledFor(logging.INFO):
            self._log_session(logging.INFO, "session.created", "connect", session)
        if self._waiters:
            self._resolve_waiters(session)
        # Busy meanwhile, so events a `created` listener causes wait their turn.
        session._busy = True
        try:
            if self._listening["created"]:
                self._emit("created", session)
            self._adopt_isolated(session)
        finally:
            session._busy = False
        queued = session._queue
        if queued:
            first = queued.popleft()
            session._queue = queued or None
            self._feed(session, first)

    def _reconcile(self) -> None:
        """Bring sessions in line with ``room.remote_participants`` (attach, room reconnected)."""
        room = self._room
        if room is None:
            return
        present = list(room.remote_participants.values())
        present_sids = {p.sid for p in present}
        for session in list(self._sessions.values()):
            if session._state in _CONNECTED_STATES and session._sid not in present_sids:
                self._feed(session, Input(InputKind.DISCONNECTED, session._key, sid=session._sid))
        for participant in present:
            # A safety net, not a source of takeovers: a participant that is present
            # but not bound gets a session only when its key has none (it may be an
            # older tab the session moved away from).
            bound = self._by_sid.get(participant.sid)
            if bound is None:
                if participant.kind in self._config.kinds and participant.sid:
                    key = self._key_of(InputKind.CONNECTED, participant)
                    if key is not None and key not in self._sessions:
                        self._create(key, participant)
                continue
            if bound._state is State.GRACE:
                self._submit(InputKind.CONNECTED, participant)  # the same connection is back
                continue
            if bound._state not in _CONNECTED_STATES:
                continue
            if participant.state == _ACTIVE and bound._state is State.CONNECTING:
                self._submit(InputKind.ACTIVE, participant)
            for publication in participant.track_publications.values():
                if publication.sid not in bound._tracks:
                    self._submit(InputKind.TRACK_PUBLISHED, participant, publication=publication)

    # ------------------------------------------------------------------ per-session processing

    def _feed(self, session: Session, inp: Input) -> None:
        """Process ``inp`` now if the session is idle, else queue it behind the running work.

        Synchronous steps run inline, so a state change is visible as soon
        as the room event has been emitted. Cleanup runs on the loop's next
        turn (see :meth:`_continue`); whatever queues up meanwhile is drained
        after it, in order, and nothing ever cancels it.
        """
        if session._busy:
            if session._queue is None:
                session._queue = deque()
            session._queue.append(inp)
            return
        session._busy = True
        needs_cleanup = self._step(session, inp)
        if needs_cleanup or session._queue:
            self._continue(session, needs_cleanup)
        else:  # the common case, without _continue's call
            session._busy = False
            session._queue = None

    def _continue(self, session: Session, needs_cleanup: bool) -> None:
        """Drain the session's queue synchronously up to the next cleanup, then schedule it."""
        if not needs_cleanup and not self._drain_queue(session):
            session._busy = False
            session._queue = None
            return
        loop = asyncio.get_running_loop()
        if self._async_cleanups:
            self._track(
                loop.create_task(
                    self._drain(session, self._cleanup(session)),
                    name=f"livekit-lifecycle:{session._key}",
                )
            )
            return
        # Every cleanup callback is synchronous: run them on the loop's next turn
        # (the session is seen `disconnecting` until then, as with a task) from
        # one plain loop callback for every session whose cleanup became due
        # meanwhile, which costs a fraction of a task each. Its future lets
        # idle() and aclose() wait for it like for any task.
        batch = self._cleanup_batch
        if batch is None:
            done: asyncio.Future[None] = loop.create_future()
            self._track(done)
            batch = self._cleanup_batch = ([], done)
            loop.call_soon(self._run_cleanup_batch, batch)
        batch[0].append(session)

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    def _run_cleanup_batch(self, batch: _CleanupBatch) -> None:
        sessions, done = batch
        # Cleanups that become due from here on (a queued takeover's) go to the next turn.
        self._cleanup_batch = None
        if done.done():  # cancelled by a shutdown past its deadline
            for session in sessions:
                session._busy = False
            return
        ran = 0
        try:
            for session in sessions:
                ran += 1
                self._cleanup_now(session)
        finally:
            done.set_result(None)
            # Only a BaseException from a callback (KeyboardInterrupt...) gets here
            # early: the sessions after it still get their cleanup, next turn.
            for session in sessions[ran:]:
                self._continue(session, True)

    def _cleanup_now(self, session: Session) -> None:
        try:
            rest = self._cleanup_sync(session)
            if rest is None:
                self._continue(session, False)
            else:
                self._track(
                    asyncio.get_running_loop().create_task(
                        self._drain(session, rest), name=f"livekit-lifecycle:{session._key}"
                    )
                )
        except Exception:
            session._busy = False
            self._internal_error(session, "cleanup")

    async def _drain(self, session: Session, work: Coroutine[Any, Any, None]) -> None:
        try:
            while True:
                await work
                if not self._drain_queue(session):
                    return
                work = self._cleanup(session)
        finally:
            session._busy = False
            if not session._queue:
                session._queue = None

    def _drain_queue(self, session: Session) -> bool:
        """Apply queued inputs in order until one starts a cleanup (True) or none is left."""
        # Re-read every time: a step can create the queue (an event it caused while busy).
        while session._queue:
            if self._step(session, session._queue.popleft()):
                return True
        return False

    def _step(self, session: Session, inp: Input) -> bool:
        """Apply one input; True when the session started disconnecting (cleanup is due)."""
        try:
            if session._state is State.REMOVED:
                # Queued behind the work that removed the session: route it
                # afresh (a connect then starts a new session).
                self._route(inp)
                return False
            if not self._apply(session, inp):
                self._ignored(session, inp)
            return session._state is State.DISCONNECTING
        except Exception:
            self._internal_error(session, inp.kind.value)
        return False

    def _apply(self, session: Session, inp: Input) -> bool:
        kind = inp.kind
        superseded = session._superseded
        if superseded is not None and inp.sid in superseded:
            # An older tab that a takeover replaced: never the session's again, even when
            # the agent's full reconnect announces it anew with the same sid.
            return False
        if kind is InputKind.CONNECTED:
            assert inp.participant is not None
            if session._state is State.GRACE:
                fired = self._fire(session, "reconnect", participant=inp.participant)
                if fired:
                    self._adopt(session)
                return fired
            if inp.sid == session._sid:
                return False
            return self._fire(session, "takeover", participant=inp.participant)
        if kind is InputKind.ACTIVE:
            return self._fire(session, "activate", sid=inp.sid)
        if kind is InputKind.DISCONNECTED:
            return self._fire(session, "disconnect", sid=inp.sid, reason=inp.reason)
        if kind is InputKind.TRACK_PUBLISHED:
            return self._fire(session, "publish_track", sid=inp.sid, track_sid=inp.track_sid)
        if kind is InputKind.TRACK_UNPUBLISHED:
            return self._fire(session, "unpublish_track", sid=inp.sid, track_sid=inp.track_sid)
        if kind is InputKind.EXPIRE:
            return self._fire(session, "expire", epoch=inp.epoch)
        return self._fire(session, "shutdown")

    def _fire(self, session: Session, trigger: str, **kwargs: Any) -> bool:
        """Fire ``trigger``, then every automatic edge the new state offers, until none applies."""
        if session._state not in self._sources[trigger]:
            return False
        if not self._events[trigger].trigger(session, **kwargs):
            return False
        settled = False
        while not settled:
            settled = True
            for automatic in self._automatic[session._state]:
                if automatic.trigger(session):
                    settled = False
                    break
        return True

    def _adopt(self, session: Session) -> None:
        """Take over what the newly bound participant already has: tracks, ACTIVE state."""
        participant = session._participant
        if participant is None:
            return
        sid = session._sid  # the participant's: it is the one bound to the session
        for track_sid in list(participant.track_publications):
            if track_sid not in session._tracks:
                self._fire(session, "publish_track", sid=sid, track_sid=track_sid)
        if session._state is State.CONNECTING and participant.state == _ACTIVE:
            self._fire(session, "activate", sid=sid)

    def _log_cleanup_started(self, session: Session) -> None:
        if self._stdlog.isEnabledFor(logging.INFO):
            self._log_session(
                logging.INFO,
                "cleanup.started",
                "cleanup",
                session,
                tracks=len(session._tracks),
                reason=reason_name(session._disconnect_reason),
            )

    async def _cleanup(self, session: Session) -> None:
        self._log_cleanup_started(session)
        for callback in list(self._cleanups):
            await self._bounded_cleanup(session, callback, functools.partial(callback, session))
        self._end_cleanup(session)

    def _cleanup_sync(self, session: Session) -> Coroutine[Any, Any, None] | None:
        """Run cleanup callbacks inline while they stay synchronous.

        Returns the rest as a coroutine from the first one that returns an
        awaitable after all (a partial or a callable object wrapping an async
        function); ``None`` once cleanup is done.
        """
        self._log_cleanup_started(session)
        callbacks = list(self._cleanups)
        for index, callback in enumerate(callbacks):
            try:
                result = callback(session)
            except (Exception, asyncio.CancelledError) as exc:
                self._reporter("cleanup", callback, session)(Outcome.FAILED, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._cleanup_rest(session, result, callback, callbacks[index + 1 :])
        self._end_cleanup(session)
        return None

    async def _cleanup_rest(
        self,
        session: Session,
        awaitable: Awaitable[Any],
        callback: CleanupCallback,
        rest: list[CleanupCallback],
    ) -> None:
        await self._bounded_cleanup(session, callback, lambda: awaitable)
        for later in rest:
            await self._bounded_cleanup(session, later, functools.partial(later, session))
        self._end_cleanup(session)

    async def _bounded_cleanup(
        self, session: Session, callback: CleanupCallback, call: Callable[[], Any]
    ) -> None:
        report = self._reporter("cleanup", callback, session)
        try:
            await call_bounded(call, (), self._callback_timeout(), report, self._abandoned)
        except asyncio.CancelledError:
            if self._cancelling_runners:
                raise
            # Not ours: a callback cancelled the task running it. Keep the
            # lifecycle going; the callback is the one that failed.
            _uncancel_current_task()
            report(Outcome.FAILED, asyncio.CancelledError("cancelled the cleanup runner"))

    def _end_cleanup(self, session: Session) -> None:
        try:
            self._fire(session, "cleanup_done")
        except Exception:
            self._internal_error(session, "cleanup_done")
        if session._state in _CONNECTED_STATES:
            self._adopt_isolated(session)  # a takeover's new connection

    def _adopt_isolated(self, session: Session) -> None:
        """:meth:`_adopt` outside a step: a failure is logged, never raised to the caller."""
        try:
            self._adopt(session)
        except Exception:
            self._internal_error(session, "adopt")

    # ------------------------------------------------------------------ guards (named in the chart)

    def _guard_current_sid(self, ev: EventData) -> bool:
        return bool(ev.kwargs.get("sid") == ev.model._sid)

    def _guard_new_sid(self, ev: EventData) -> bool:
        participant = ev.kwargs.get("participant")
        return participant is not None and participant.sid != ev.model._sid

    def _guard_pending(self, ev: EventData) -> bool:
        return ev.model._pending is not None

    def _guard_grace_allowed(self, ev: EventData) -> bool:
        config = self._config
        return (
            config.grace_period > 0
            and not self._closing
            and ev.model._disconnect_reason not in config.no_grace_reasons
        )

    def _guard_current_timer(self, ev: EventData) -> bool:
        return bool(ev.kwargs.get("epoch") == ev.model._grace_epoch)

    def _guard_participant_active(self, ev: EventData) -> bool:
        participant = ev.model._participant
        return participant is not None and (
            participant.state == _ACTIVE or bool(participant.track_publications)
        )

    # ------------------------------------------------------------------ effects

    def _effect_publish_track(self, ev: EventData) -> None:
        ev.model._tracks.add(ev.kwargs["track_sid"])
        self._log_session(
            logging.DEBUG, "track.published", "track", ev.model, track=ev.kwargs["track_sid"]
        )

    def _effect_unpublish_track(self, ev: EventData) -> None:
        ev.model._tracks.discard(ev.kwargs["track_sid"])
        self._log_session(
            logging.DEBUG, "track.unpublished", "track", ev.model, track=ev.kwargs["track_sid"]
        )

    def _effect_disconnect(self, ev: EventData) -> None:
        session: Session = ev.model
        session._disconnect_reason = ev.kwargs.get("reason")
        session._disconnected_at = time.time()

    def _effect_takeover(self, ev: EventData) -> None:
        session: Session = ev.model
        superseded = session._superseded
        if superseded is None:
            superseded = session._superseded = {}
        superseded[session._sid] = None
        if len(superseded) > _SUPERSEDED_LIMIT:
            del superseded[next(iter(superseded))]
        session._pending = ev.kwargs["participant"]
        session._disconnect_reason = None
        session._disconnected_at = time.time()

    def _effect_shutdown(self, ev: EventData) -> None:
        session: Session = ev.model
        if session._state in _CONNECTED_STATES:
            session._disconnect_reason = None
            session._disconnected_at = time.time()

    def _effect_cleanup_done(self, ev: EventData) -> None:
        # Only our references go: the SDK owns the tracks and unpublishes them itself.
        session: Session = ev.model
        session._tracks.clear()
        session._participant = None
        session._cleanups += 1

    def _effect_reconnect(self, ev: EventData) -> None:
        self._bind(ev.model, ev.kwargs["participant"])

    def _effect_rejoin(self, ev: EventData) -> None:
        session: Session = ev.model
        pending, session._pending = session._pending, None
        assert pending is not None
        self._bind(session, pending)

    def _bind(self, session: Session, participant: rtc.RemoteParticipant) -> None:
        if self._by_sid.get(session._sid) is session:
            del self._by_sid[session._sid]
        identity = participant.identity
        session._identity = session._key if identity == session._key else identity
        session._sid = participant.sid
        session._participant = participant
        session._tracks.clear()
        session._reconnects += 1
        session._connections += 1
        session._connected_at = time.time()
        session._disconnected_at = None
        session._disconnect_reason = None
        self._by_sid[session._sid] = session

    def _enter_grace(self, ev: EventData) -> None:
        session: Session = ev.model
        session._grace_epoch += 1
        session._grace_timer = asyncio.get_running_loop().call_later(
            self._config.grace_period, self._on_grace_timer, session, session._grace_epoch
        )

    def _exit_grace(self, ev: EventData) -> None:
        timer, ev.model._grace_timer = ev.model._grace_timer, None
        if timer is not None:
            timer.cancel()

    def _enter_removed(self, ev: EventData) -> None:
        self._forget(ev.model)

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session._key) is session:
            del self._sessions[session._key]
        if self._by_sid.get(session._sid) is session:
            del self._by_sid[session._sid]
        if session._grace_timer is not None:
            session._grace_timer.cancel()
            session._grace_timer = None
        session._participant = None
        session._pending = None
        session._tracks.clear()

    def _on_grace_timer(self, session: Session, epoch: int) -> None:
        session._grace_timer = None
        self._feed(session, Input(InputKind.EXPIRE, session._key, epoch=epoch))

    def _after_state_change(self, ev: EventData) -> None:
        session: Session = ev.model
        dest = session._state
        source = self._state_by_name[ev.transition.source]
        transition = Transition(source, dest, ev.event.name, session._sid, time.time())
        session._history.append(transition)
        self._stats["transitions"] += 1
        if self._check_invariants_on:
            self._check_invariants(session)
        if self._stdlog.isEnabledFor(logging.INFO):  # spares building the fields when off
            self._log_session(
                logging.INFO,
                "session.transition",
                _TRIGGER_CATEGORY.get(transition.trigger, "session"),
                session,
                trigger=transition.trigger,
                from_state=transition.source.value,
                to_state=dest.value,
            )
        if self._waiters:
            self._resolve_waiters(session)
        listening = self._listening
        if listening["state_changed"]:
            self._emit("state_changed", session, transition)
        if dest is State.REMOVED:
            if listening["removed"]:
                self._emit("removed", session)
        elif dest is State.RECONNECTED and listening["reconnected"]:
            self._emit("reconnected", session)

    def _check_invariants(self, session: Session) -> None:
        from .invariants import check_session

        for violation in check_session(self, session, self._chart):
            self._stats["invariant_violations"] += 1
            self._log_session(
                logging.ERROR,
                "invariant.violated",
                "session",
                session,
                invariant=violation.invariant,
                detail=violation.detail,
            )

    # ------------------------------------------------------------------ notifications, waiters

    def _resolve_waiters(self, session: Session) -> None:
        waiters = self._waiters.get(session._key)
        if not waiters:
            return
        for state, future in waiters:
            if state is session._state and not future.done():
                future.set_result(session)

    def _emit(self, name: str, *args: Any) -> None:
        for listener in self._listeners.take(name):
            try:
                result = listener(*args)
            except Exception as exc:
                self._reporter(f"listener:{name}", listener, args[0])(Outcome.FAILED, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                report = self._reporter(f"listener:{name}", listener, args[0])
                awaitable = result
                task = asyncio.get_running_loop().create_task(
                    call_bounded(
                        lambda aw=awaitable: aw,
                        (),
                        self._config.cleanup_timeout,
                        report,
                        self._abandoned,
                    )
                )
                self._track(task)

    def _reporter(
        self, what: str, fn: object, session: Session
    ) -> Callable[[Outcome, BaseException | None], None]:
        # Built for every callback call, used only on failure: names are made then.
        def report(outcome: Outcome, exc: BaseException | None) -> None:
            callback = describe(fn)
            if outcome is Outcome.TIMED_OUT:
                self._stats["callback_timeouts"] += 1
                self._log_session(
                    logging.WARNING,
                    f"{what.split(':')[0]}.timeout",
                    "cleanup" if what == "cleanup" else "session",
                    session,
                    callback=callback,
                    hook=what,
                )
                return
            self._stats["callback_errors"] += 1
            self._log_session(
                logging.ERROR,
                f"{what.split(':')[0]}.failed",
                "cleanup" if what == "cleanup" else "session",
                session,
                callback=callback,
                hook=what,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc if exc is not None and exc.__traceback__ is not None else None,
            )

        return report

    def _callback_timeout(self) -> float:
        timeout = self._config.cleanup_timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - asyncio.get_running_loop().time())
        return max(timeout, 0.0)

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
                    category="shutdown",
                    room=self._room_name(),
                    resource=name,
                    outcome=outcome.value,
                    error=None if exc is None else f"{type(exc).__name__}: {exc}",
                )

            # Resources are always asked to close, even when sessions used up
            # the shutdown budget: a leaked TTS connection is worse than a late exit.
            timeout = max(self._callback_timeout(), min(self._config.cleanup_timeout, 1.0))
            await call_bounded(closer, (), timeout, report, self._abandoned)
            if not failed:
                self._info("shutdown.resource_closed", "shutdown", resource=name)

    # ------------------------------------------------------------------ logging helpers

    def _room_name(self) -> str | None:
        # The last attached room: shutdown detaches first, and its logs still need the name.
        room = self._last_room
        return None if room is None else room.name

    def _info(self, event: str, category: str, **fields: Any) -> None:
        if self._stdlog.isEnabledFor(logging.INFO):
            self._log.info(event, category=category, room=self._room_name(), **fields)

    def _debug(self, event: str, category: str, **fields: Any) -> None:
        if self._stdlog.isEnabledFor(logging.DEBUG):
            self._log.debug(event, category=category, room=self._room_name(), **fields)

    def _log_session(
        self, level: int, event: str, category: str, session: Session, **fields: Any
    ) -> None:
        if self._stdlog.isEnabledFor(level):
            self._log.log(
                level,
                event,
                category=category,
                room=self._room_name(),
                key=session._key,
                identity=session._identity,
                sid=session._sid,
                state=session._state.value,
                **fields,
            )

    def _ignored(self, session: Session, inp: Input) -> None:
        if inp.sid and inp.sid != session._sid:
            counter, why = "ignored_stale", "event for a connection that is not the current one"
        elif _is_duplicate(session._state, inp.kind):
            counter, why = (
                "ignored_duplicate",
                f"already handled (session is {session._state.value})",
            )
        else:
            counter, why = "ignored_invalid", f"not applicable in state {session._state.value}"
        self._stats[counter] += 1
        self._log_session(
            logging.DEBUG,
            "event.ignored",
            _CATEGORY[inp.kind],
            session,
            input=inp.kind.value,
            event_sid=inp.sid or None,
            why=why,
        )

    def _internal_error(self, session: Session, during: str) -> None:
        self._stats["internal_errors"] += 1
        self._log_session(
            logging.ERROR,
            "manager.internal_error",
            "session",
            session,
            during=during,
            exc_info=True,
        )


_CATEGORY = {
    InputKind.CONNECTED: "connect",
    InputKind.ACTIVE: "connect",
    InputKind.DISCONNECTED: "disconnect",
    InputKind.TRACK_PUBLISHED: "track",
    InputKind.TRACK_UNPUBLISHED: "track",
    InputKind.EXPIRE: "session",
    InputKind.SHUTDOWN: "shutdown",
}
_TRIGGER_CATEGORY = {
    "activate": "connect",
    "publish_track": "track",
    "disconnect": "disconnect",
    "takeover": "connect",
    "shutdown": "shutdown",
    "cleanup_done": "cleanup",
    "reconnect": "connect",
    "rejoin": "connect",
}


def _uncancel_current_task() -> None:
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)  # Python >= 3.11 counts cancel requests
    if uncancel is not None:
        uncancel()


def _room_handler(method: Callable[..., None], *bound: object) -> Callable[..., None]:
    """``method`` with ``bound`` first arguments, as a handler cheap for ``EventEmitter.emit``.

    ``emit`` calls ``inspect.signature(handler)`` on every event to drop
    arguments the handler does not take. For a bound method that costs
    ~10 µs per event, more than all our own processing of it; a
    ``functools.partial`` carrying its precomputed ``__signature__`` costs
    ~1 µs, and calls the method without a Python frame of its own.
    """
    handler = functools.partial(method, *bound)
    handler.__signature__ = inspect.signature(handler)  # type: ignore[attr-defined]
    return handler


def _is_duplicate(state: State, kind: InputKind) -> bool:
    if kind is InputKind.DISCONNECTED:
        return state not in _CONNECTED_STATES
    if kind is InputKind.ACTIVE:
        return state is State.ACTIVE
    return kind is InputKind.CONNECTED
