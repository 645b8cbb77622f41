"""One manager's structured log and counters, shared by its parts.

Every part of a manager (the façade, the room intake, the session runtime,
the cleanup activity, the store's side) logs through one :class:`ManagerLog`:
structlog lines with the room and the session's key, identity, sid and state
bound, built only when their level is enabled, and the ``stats`` counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._callbacks import Outcome, Report, describe
from .log import LOGGER_NAME, get_logger

if TYPE_CHECKING:
    from .session import Session

__all__ = ["STATS", "ManagerLog"]

STATS = (
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
"""The counters every manager has (a durable store adds its own)."""


class ManagerLog:
    """Structured logging bound to a manager's room, and the manager's counters."""

    __slots__ = ("log", "room_name", "stats", "stdlog")

    def __init__(self, room_name: Callable[[], str | None]) -> None:
        self.log = get_logger()
        self.stdlog = logging.getLogger(LOGGER_NAME)
        self.room_name = room_name
        """The room logs name: the last attached one (a shutdown detaches first)."""
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        """Counter -> count; ``LifecycleManager.stats`` is a copy."""

    def enabled(self, level: int) -> bool:
        return self.stdlog.isEnabledFor(level)

    def info(self, event: str, category: str, **fields: Any) -> None:
        if self.stdlog.isEnabledFor(logging.INFO):
            self.log.info(event, category=category, room=self.room_name(), **fields)

    def debug(self, event: str, category: str, **fields: Any) -> None:
        if self.stdlog.isEnabledFor(logging.DEBUG):
            self.log.debug(event, category=category, room=self.room_name(), **fields)

    def warning(self, event: str, category: str, **fields: Any) -> None:
        self.log.warning(event, category=category, room=self.room_name(), **fields)

    def error(self, event: str, category: str, **fields: Any) -> None:
        self.log.error(event, category=category, room=self.room_name(), **fields)

    def session(
        self, level: int, event: str, category: str, session: Session, **fields: Any
    ) -> None:
        """One line about ``session``, with its key, identity, sid and state bound."""
        if self.stdlog.isEnabledFor(level):
            self.log.log(
                level,
                event,
                category=category,
                room=self.room_name(),
                key=session._key,
                identity=session._identity,
                sid=session._sid,
                state=session._state.value,
                **fields,
            )

    def internal_error(self, session: Session, during: str) -> None:
        """A bug of ours while handling ``session``: logged with the traceback, counted."""
        self.stats["internal_errors"] += 1
        self.session(
            logging.ERROR,
            "manager.internal_error",
            "session",
            session,
            during=during,
            exc_info=True,
        )

    def reporter(
        self,
        what: str,
        fn: object,
        session: Session,
        category: str,
        also: Callable[[Outcome], None] | None = None,
    ) -> Report:
        """What :func:`~._callbacks.call_bounded` tells when user code ``fn`` fails or hangs.

        ``what`` names the hook in the log line (``cleanup``, ``listener:created``);
        its first part names the event (``cleanup.failed``, ``listener.timeout``).
        """

        # Built for every callback call, used only on failure: names are made then.
        def report(outcome: Outcome, exc: BaseException | None) -> None:
            if also is not None:
                also(outcome)
            event = what.split(":")[0]
            if outcome is Outcome.TIMED_OUT:
                self.stats["callback_timeouts"] += 1
                self.session(
                    logging.WARNING,
                    f"{event}.timeout",
                    category,
                    session,
                    callback=describe(fn),
                    hook=what,
                )
                return
            self.stats["callback_errors"] += 1
            self.session(
                logging.ERROR,
                f"{event}.failed",
                category,
                session,
                callback=describe(fn),
                hook=what,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc if exc is not None and exc.__traceback__ is not None else None,
            )

        return report
