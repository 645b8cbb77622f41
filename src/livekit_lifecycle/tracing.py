"""OpenTelemetry spans of lifecycle managers: one per cleanup run, one per shutdown.

Opt in per manager with :func:`enable_tracing` ``(manager)``. Only ``opentelemetry-api`` is
needed: without a configured tracer provider its spans are no-ops. Spans:

``livekit_lifecycle.cleanup``
    Every cleanup callback of one ended connection. Parented to the context
    the disconnect was handled in (the shutdown span during a shutdown).
    Attributes ``livekit_lifecycle.room``, ``.key``, ``.identity``, ``.sid``,
    ``.trigger`` (disconnect, takeover or shutdown), ``.reason`` (the
    ``rtc.DisconnectReason`` name, else the trigger) and ``.outcome``
    (ok, error, timeout). Status ERROR unless ok.
``livekit_lifecycle.shutdown``
    One ``aclose()``, parented to the caller's context; current while the
    shutdown runs, so its cleanup spans are its children. Attributes
    ``livekit_lifecycle.room``, ``.sessions`` and ``.outcome`` (ok, timeout).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ._observer import Observer
from .session import reason_name

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .manager import LifecycleManager
    from .session import Session

__all__ = ["CLEANUP_SPAN", "SHUTDOWN_SPAN", "enable_tracing"]

CLEANUP_SPAN = "livekit_lifecycle.cleanup"
SHUTDOWN_SPAN = "livekit_lifecycle.shutdown"
_ATTR = "livekit_lifecycle."

_TRACED: weakref.WeakSet[LifecycleManager] = weakref.WeakSet()
"""Managers with tracing on. Kept here, not asked of the manager: what it reports to its
observers is all this integration takes from it (docs/architecture.md, "Seams")."""


def enable_tracing(
    manager: LifecycleManager, tracer_provider: TracerProvider | None = None
) -> None:
    """Emit ``manager``'s spans through ``tracer_provider`` (the global one when ``None``).

    Idempotent: a second call keeps the first tracer.

    Raises:
        ImportError: opentelemetry-api is not installed.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError(
            "livekit-lifecycle tracing needs opentelemetry-api:"
            " pip install 'livekit-lifecycle[tracing]'"
        ) from None
    if manager in _TRACED:
        return
    from ._version import __version__

    tracer = trace.get_tracer("livekit_lifecycle", __version__, tracer_provider=tracer_provider)
    manager._add_observer(_Tracing(manager, tracer))  # the façade's seam for observers
    _TRACED.add(manager)


class _Tracing(Observer):
    __slots__ = ("_manager", "_room", "_runs", "_shutdown", "_tracer")

    def __init__(self, manager: LifecycleManager, tracer: Tracer) -> None:
        self._manager = weakref.ref(manager)
        self._tracer = tracer
        self._room = ""
        self._runs: dict[Session, tuple[Span, str]] = {}
        self._shutdown: tuple[Span, object] | None = None

    def _room_name(self) -> str:
        # Shutdown detaches the room before cleaning: remember the name from before.
        manager = self._manager()
        room = None if manager is None else manager.room
        if room is not None:
            self._room = room.name
        return self._room

    def cleanup_started(self, session: Session) -> None:
        history = session.history
        trigger = history[-1].trigger if history else ""
        reason = reason_name(session.disconnect_reason) or trigger
        attributes: dict[str, Any] = {
            _ATTR + "room": self._room_name(),
            _ATTR + "key": session.key,
            _ATTR + "identity": session.identity,
            _ATTR + "sid": session.sid,
            _ATTR + "trigger": trigger,
            _ATTR + "reason": reason,
        }
        span = self._tracer.start_span(CLEANUP_SPAN, attributes=attributes)
        self._runs[session] = (span, "ok")

    def cleanup_failed(self, session: Session, timed_out: bool) -> None:
        run = self._runs.get(session)
        if run is not None and run[1] != "timeout":
            self._runs[session] = (run[0], "timeout" if timed_out else "error")

    def cleanup_ended(self, session: Session) -> None:
        run = self._runs.pop(session, None)
        if run is not None:
            _end(*run)

    def shutdown_started(self, sessions: int) -> None:
        from opentelemetry import context, trace

        span = self._tracer.start_span(
            SHUTDOWN_SPAN,
            attributes={_ATTR + "room": self._room_name(), _ATTR + "sessions": sessions},
        )
        # Current for the rest of the shutdown task: cleanups it starts are children.
        token = context.attach(trace.set_span_in_context(span, _current()))
        self._shutdown = (span, token)

    def shutdown_ended(self, timed_out: bool) -> None:
        from opentelemetry import context

        for span, _ in self._runs.values():  # runs the deadline cut short
            _end(span, "timeout")
        self._runs.clear()
        if self._shutdown is None:
            return
        span, token = self._shutdown
        self._shutdown = None
        _end(span, "timeout" if timed_out else "ok")
        context.detach(token)  # type: ignore[arg-type]


def _current() -> Context:
    from opentelemetry import context

    return context.get_current()


def _end(span: Span, outcome: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute(_ATTR + "outcome", outcome)
    if outcome != "ok":
        span.set_status(Status(StatusCode.ERROR, f"cleanup {outcome}"))
    span.end()
