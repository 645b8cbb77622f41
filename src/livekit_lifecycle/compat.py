"""The seed's standalone ``cleanup_handlers`` API, as a thin layer over :class:`LifecycleManager`.

An agent written against the seed's module migrates by changing one import::

    from cleanup_handlers import (                # before
    from livekit_lifecycle.compat import (        # after
        register_cleanup_handlers,
        graceful_shutdown,
        update_session_user,
        get_session_info,
        active_sessions,
    )

Each registered room gets one :class:`LifecycleManager`; the functions below
translate the seed's calls into the manager's API, so the seed's promises hold
for real: one cleanup per ended connection whatever the number of disconnect
events, the user id kept through a reconnect inside the window (30 s by
default), graceful shutdown that closes the TTS once.

Limits, all consequences of the seed's design (module-level state keyed by
participant sid) that the manager itself avoids:

- The state is module-level: one entry per ``rtc.Room``, held weakly, so a
  room that is garbage-collected takes its entry with it. Registration is
  thread-safe (livekit-agents may run several jobs in threads of one
  process); every other call must be made from the room's event loop.
- Participant sids are looked up across every registered room. Server sids
  are unique, so this only matters for rooms built by hand in tests.
- A session is listed under the sid of its *latest* connection: after a
  reconnect the old sid is gone and the new one carries the same user id
  (the seed kept a stale entry for the old sid for 30 s).
- :data:`active_sessions` is a read-only live view; its values are
  read-only snapshots. Change user ids with :func:`update_session_user`.
- ``register_cleanup_handlers`` returns a :class:`CleanupHandlers` object,
  not functions to pass to ``room.off``: call its ``remove()`` instead.
- There are no per-participant ``cleanup_locks``: the manager processes each
  user's events in order, which is what the locks were for.

For anything more (cleanup callbacks that get the session, notifications,
``wait_for`` in tests) take the manager with :func:`get_manager`, or use
:class:`LifecycleManager` directly (``docs/migrating.md``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from livekit import rtc

from ._callbacks import contains_callable, same_callable
from .config import LifecycleConfig
from .log import get_logger
from .manager import LifecycleManager
from .session import Session
from .statechart import CLEANED

__all__ = [
    "CleanupHandlers",
    "ClearUserCallback",
    "active_sessions",
    "get_manager",
    "get_session_info",
    "graceful_shutdown",
    "register_cleanup_handlers",
    "update_session_user",
]

ClearUserCallback = Callable[[str | None], Any]
"""The seed's ``clear_user_callback``, sync or async: called with ``None`` to clear the user."""

_log = get_logger()


class CleanupHandlers:
    """What :func:`register_cleanup_handlers` returns: the room's manager, and a way to stop it.

    The seed returned its event handler functions; here the events are handled
    by :attr:`manager`, so :meth:`remove` replaces ``room.off(...)``.
    """

    __slots__ = ("events", "manager", "room")

    def __init__(self, room: rtc.Room, manager: LifecycleManager) -> None:
        self.room = room
        self.manager = manager
        self.events: tuple[str, ...] = (
            "participant_connected",
            "participant_disconnected",
            "track_published",
        )
        """The seed's events (the manager listens to a few more, see ``docs/concepts.md``)."""

    def remove(self) -> None:
        """Stop handling the room's events (the seed's ``room.off``). Sessions are kept."""
        self.manager.detach()

    def __repr__(self) -> str:
        return f"CleanupHandlers(room={self.room.name!r}, sessions={len(self.manager.sessions)})"


@dataclass(eq=False)
class _RoomState:
    manager: LifecycleManager
    handlers: CleanupHandlers
    clear_user: ClearUserCallback | None
    shut_down: bool = False
    closed_resources: list[object] = field(default_factory=list)


class _Registry:
    """The seed's module-level state, one entry per room (weakly held) instead of per sid."""

    def __init__(self) -> None:
        self._rooms: weakref.WeakKeyDictionary[rtc.Room, _RoomState] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, room: rtc.Room) -> _RoomState | None:
        with self._lock:
            return self._rooms.get(room)

    def put(self, room: rtc.Room, state: _RoomState) -> None:
        with self._lock:
            self._rooms[room] = state

    def live(self) -> list[_RoomState]:
        with self._lock:
            return [state for state in self._rooms.values() if not state.shut_down]

    def session_by_sid(self, sid: str) -> tuple[LifecycleManager, Session] | None:
        for state in self.live():
            session = state.manager.by_sid(sid)
            if session is not None:
                return state.manager, session
        return None


_registry = _Registry()


def register_cleanup_handlers(
    room: rtc.Room,
    clear_user_callback: ClearUserCallback | None = None,
    *,
    config: LifecycleConfig | None = None,
) -> CleanupHandlers:
    """Track ``room``'s participants: the seed's connect/disconnect/track handlers, via a manager.

    ``clear_user_callback(None)`` is called once per ended connection, while
    that connection is cleaned up, and for every still-connected user at
    :func:`graceful_shutdown`. ``config`` (keyword-only, not in the seed)
    defaults to the seed's 30 s reconnection window.

    Calling it again for the same room returns the same handlers; a
    ``clear_user_callback`` given then replaces the previous one.

    Raises:
        TypeError: if ``room`` is not an ``rtc.Room`` or the callback is not callable.
    """
    if not isinstance(room, rtc.Room):
        raise TypeError(f"room must be a livekit.rtc.Room, got {type(room).__name__}")
    if clear_user_callback is not None and not callable(clear_user_callback):
        raise TypeError(f"clear_user_callback must be callable, got {clear_user_callback!r}")
    existing = _registry.get(room)
    if existing is not None and not existing.shut_down:
        if clear_user_callback is not None:
            existing.clear_user = clear_user_callback
        _log.info("compat.already_registered", category="handlers", room=room.name)
        return existing.handlers
    manager = LifecycleManager(config or LifecycleConfig(grace_period=30.0))
    state = _RoomState(manager, CleanupHandlers(room, manager), clear_user_callback)

    def clear_user(session: Session) -> Any:
        # Read at call time, so a callback replaced later is the one called.
        callback = state.clear_user
        return None if callback is None else callback(None)

    manager.add_cleanup(clear_user)
    manager.attach(room)
    _registry.put(room, state)
    _log.info("compat.registered", category="handlers", room=room.name)
    return state.handlers


async def graceful_shutdown(
    room: rtc.Room,
    tts: object | None = None,
    clear_user_callback: ClearUserCallback | None = None,
) -> None:
    """Clean every still-connected user once, close ``tts`` once, forget the room's sessions.

    Register it with ``ctx.add_shutdown_callback`` in livekit-agents: an
    entrypoint returns right after ``session.start()``, so a ``finally``
    block there would shut down at once. A second call for the same room
    waits for the first one's shutdown and does nothing else (a ``tts`` not
    closed yet is still closed).

    ``tts`` is anything with ``aclose()``/``close()`` or a callable;
    ``clear_user_callback``, if it is not the one given to
    :func:`register_cleanup_handlers`, is also called for each user cleaned now.
    "The one" is compared as ``docs/concepts.md`` says: ``self.clear_user`` passed
    to both is one callback (each access makes a new bound method), and so are
    equal ``functools.partial`` objects; a ``lambda`` is only ever equal to itself.

    Raises:
        TypeError: before anything is shut down, for a ``tts`` that cannot be
            closed or a ``clear_user_callback`` that is not callable.
    """
    if tts is not None and not _closable(tts):
        raise TypeError(f"tts {tts!r} has no aclose() or close() method and is not callable")
    if clear_user_callback is not None and not callable(clear_user_callback):
        raise TypeError(f"clear_user_callback must be callable, got {clear_user_callback!r}")
    state = _registry.get(room)
    if state is None:
        _log.warning(
            "compat.shutdown_unregistered",
            category="shutdown",
            room=room.name,
            why="register_cleanup_handlers() was never called for this room",
        )
        await _close_alone(tts)
        return
    if state.shut_down:
        _log.info("compat.already_shut_down", category="shutdown", room=room.name)
        await state.manager.aclose()  # returns when the first call's shutdown is done
        if tts is not None and not contains_callable(state.closed_resources, tts):
            state.closed_resources.append(tts)
            await _close_alone(tts, state.manager.config)
        return
    state.shut_down = True
    manager = state.manager
    if tts is not None:
        state.closed_resources.append(tts)
    if manager.closed:
        # The room disconnected first and the manager shut itself down.
        await manager.aclose()
        await _close_alone(tts, manager.config)
        return
    extra = clear_user_callback
    if extra is not None and not same_callable(extra, state.clear_user):
        manager.add_cleanup(lambda _session: extra(None))
    if tts is not None:
        manager.add_resource(tts, name="tts")
    await manager.aclose()


def update_session_user(participant_sid: str, user_id: str | None) -> bool:
    """Attach ``user_id`` to the session of ``participant_sid``; it survives a reconnect.

    Returns whether a session was found; an unknown sid is logged and ignored,
    as the seed did.

    Raises:
        TypeError: if ``user_id`` is neither a string nor ``None``.
    """
    if user_id is not None and not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str or None, got {type(user_id).__name__}")
    found = _registry.session_by_sid(participant_sid)
    if found is None:
        _log.warning(
            "compat.unknown_participant", category="session", sid=participant_sid, user_id=user_id
        )
        return False
    manager, _ = found
    manager.set_user_id(participant_sid, user_id)
    return True


def get_session_info(participant_sid: str) -> dict[str, Any] | None:
    """The seed's session dict for ``participant_sid``, or ``None``.

    ``{"user_id", "tracks" (a set of track sids), "cleanup_done", "connected_at"}``.
    A fresh copy each call: changing it changes nothing.
    """
    found = _registry.session_by_sid(participant_sid)
    return None if found is None else _info(found[1])


def get_manager(room: rtc.Room) -> LifecycleManager | None:
    """The manager behind ``room``'s handlers (``None`` if not registered or shut down)."""
    state = _registry.get(room)
    return None if state is None or state.shut_down else state.manager


class _ActiveSessions(Mapping[str, Mapping[str, Any]]):
    """Read-only live view: participant sid -> the seed's session dict, over every room."""

    def _sessions(self) -> dict[str, Session]:
        return {
            session.sid: session
            for state in _registry.live()
            for session in state.manager.sessions.values()
        }

    def __getitem__(self, sid: str) -> Mapping[str, Any]:
        found = _registry.session_by_sid(sid)
        if found is None:
            raise KeyError(sid)
        return MappingProxyType(_info(found[1]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._sessions())

    def __len__(self) -> int:
        return len(self._sessions())

    def __repr__(self) -> str:
        snapshot = {sid: _info(session) for sid, session in self._sessions().items()}
        return f"active_sessions({snapshot!r})"


active_sessions: Mapping[str, Mapping[str, Any]] = _ActiveSessions()
"""Every live session of every registered room, keyed by its current participant sid."""


def _info(session: Session) -> dict[str, Any]:
    return {
        "user_id": session.user_id,
        "tracks": set(session.tracks),
        "cleanup_done": session.state in CLEANED,
        "connected_at": session.connected_at,
    }


def _closable(resource: object) -> bool:
    return (
        callable(getattr(resource, "aclose", None))
        or callable(getattr(resource, "close", None))
        or callable(resource)
    )


async def _close_alone(resource: object | None, config: LifecycleConfig | None = None) -> None:
    """Close a resource with the manager's isolation and bounds, outside any room."""
    if resource is None:
        return
    closer = LifecycleManager(config)
    closer.add_resource(resource, name="tts")
    await closer.aclose()
