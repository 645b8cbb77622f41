"""State every part of the manager shares, and how it logs, notifies and wakes waiters.

:class:`_Core` is the base of the manager's private layers (:mod:`._runner`,
then :mod:`._intake`, then the public :class:`~livekit_lifecycle.manager.LifecycleManager`).
It holds the indexes and counters, builds no machine and knows no room event:
it is what the guards and effects (:mod:`._actions`) and the runner read.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from livekit import rtc

from ._callbacks import Outcome, call_bounded, describe
from ._emitter import Listeners
from ._observer import Observer, Observers
from .config import LifecycleConfig
from .log import LOGGER_NAME, get_logger
from .session import Session
from .statechart import PARTICIPANT_CHART, State

__all__ = ["InternalView"]

CleanupCallback = Callable[[Session], Any]
"""``fn(session)``, sync or async; called while the session is ``disconnecting``."""

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


class _Core:
    def __init__(self, config: LifecycleConfig | None = None) -> None:
        if config is not None and not isinstance(config, LifecycleConfig):
            raise TypeError(f"config must be a LifecycleConfig, got {type(config).__name__}")
        self._config = config or LifecycleConfig()
        self._chart = PARTICIPANT_CHART
        self._connected = self._chart.group("connected")
        self._sessions: dict[str, Session] = {}
        self._by_sid: dict[str, Session] = {}
        self._cleanups: list[CleanupCallback] = []
        self._async_cleanups = False
        """Whether cleanup runs in a task (an async callback or a claim hook is registered)."""
        self._resources: list[tuple[str, Callable[[], Any]]] = []
        self._listeners = Listeners()
        self._listening = self._listeners.by_name
        self._check_invariants_on = self._config.check_invariants
        self._waiters: dict[str, list[tuple[State, asyncio.Future[Session]]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        """Session runners, scheduled cleanups and async listeners: what idle() waits for."""
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._room: rtc.Room | None = None
        self._last_room: rtc.Room | None = None
        self._handlers: list[tuple[str, Callable[..., None]]] = []
        """The attached room's handlers (:mod:`._intake` registers them)."""
        self._closing = False
        self._cancelling_runners = False
        self._close_task: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self._stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._observer = Observer()
        """Observability hooks (metrics, tracing; :mod:`._observer`): a no-op unless enabled."""
        self._log = get_logger()
        self._stdlog = logging.getLogger(LOGGER_NAME)

    def _add_observer(self, observer: Observer) -> None:
        self._observer = Observers.combine(self._observer, observer)

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
            if what == "cleanup":
                self._observer.cleanup_failed(session, outcome is Outcome.TIMED_OUT)  # hook
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

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)


class InternalView:
    """A live, read-only window on a manager's indexes and bookkeeping.

    The one way code outside the manager's own layers (:mod:`livekit_lifecycle.invariants`)
    reads them: what it may rely on is listed here, and nothing else.
    """

    __slots__ = ("_manager",)

    def __init__(self, manager: _Core) -> None:
        self._manager = manager

    @property
    def sessions(self) -> Mapping[str, Session]:
        """Live sessions by key."""
        return self._manager._sessions

    @property
    def by_sid(self) -> Mapping[str, Session]:
        """Live sessions by the sid of their current connection."""
        return self._manager._by_sid

    @property
    def tasks(self) -> frozenset[asyncio.Future[Any]]:
        """Runners, scheduled cleanups and async listeners not yet done or just done."""
        return frozenset(self._manager._tasks)

    @property
    def waiter_count(self) -> int:
        """Pending ``wait_for`` calls."""
        return sum(len(waiters) for waiters in self._manager._waiters.values())

    @property
    def handler_count(self) -> int:
        """Handlers registered on the attached room."""
        return len(self._manager._handlers)

    @property
    def resource_count(self) -> int:
        """Resources still to close."""
        return len(self._manager._resources)

    @property
    def room(self) -> rtc.Room | None:
        """The attached room."""
        return self._manager._room

    @property
    def closed(self) -> bool:
        """Whether shutdown has started."""
        return self._manager._closing
