"""Room intake: the room's event handlers, translating each event once into an :class:`Input`.

The only module that knows ``rtc.Room`` event names. It finds the session an
input is for (by sid, else by session key: :meth:`_Intake._key_of`), creates
sessions, and keeps sessions in line with the room after an attach or a
reconnect (:meth:`_Intake._reconcile`); everything past routing is the
runner's (:mod:`._runner`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from livekit import rtc

from ._events import Input, InputKind
from ._runner import _ACTIVE, _Runner
from .config import LifecycleConfig
from .session import Session, reason_name
from .statechart import State

if TYPE_CHECKING:
    from ._persistence import Persistence

__all__ = ["session_key"]


class _Intake(_Runner):
    def __init__(self, config: LifecycleConfig | None = None) -> None:
        super().__init__(config)
        self._reconcile_on_connect = False
        self._persist: Persistence | None = None
        """A durable store's side (restore, write-behind, claims): see :mod:`._persistence`."""

    def _register(self, room: rtc.Room, *, adopt_later: bool = False) -> None:
        """Listen to ``room`` and adopt who is already in it (``attach`` checked ``room``).

        With ``adopt_later`` the participants already present are adopted on the
        event loop's next turn (or before the room's next event, whichever comes
        first), never inside this call: the caller's code that runs before its next
        ``await`` (registering listeners) then sees every notification they cause.
        """
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
        loop = _running_loop() if adopt_later else None
        if loop is not None:
            # The same catch-up as for a room that connects later: once, first thing.
            self._reconcile_on_connect = True
            loop.call_soon(self._catch_up)
        else:
            self._reconcile()

    def _unregister(self) -> None:
        room = self._room
        if room is None:
            return
        for name, handler in self._handlers:
            room.off(name, handler)  # type: ignore[arg-type]
        self._handlers = []
        self._info("handlers.removed", "handlers")
        self._room = None

    def _start_close(self) -> None:
        """Begin the shutdown: the manager implements it."""
        raise NotImplementedError

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

    def _catch_up(self, leaving: rtc.RemoteParticipant | None = None) -> None:
        """Adopt the participants ``Room.connect()`` added silently, once.

        ``leaving`` is one of them whose leave is the event that triggers the
        catch-up: the room no longer lists them, yet their connection must be
        adopted to be cleaned (the SDK only reports leaves of known participants).
        """
        room = self._room
        if (
            self._reconcile_on_connect
            and room is not None
            and room.isconnected()
            and not self._closing
        ):
            self._reconcile_on_connect = False
            self._reconcile()
            holding = self._persist is not None and self._persist.holding
            if leaving is not None and leaving.sid not in self._by_sid and not holding:
                self._adopt_unbound(leaving)

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
        if self._reconcile_on_connect:
            self._catch_up(participant if kind is InputKind.DISCONNECTED else None)
        if self._persist is not None and self._persist.holding:  # stored sessions first
            self._persist.hold(
                functools.partial(self._submit, kind, participant, publication=publication)
            )
            return
        self._stats["events"] += 1
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
        key = session_key(self._config, participant)
        if isinstance(key, _BadKey):
            self._reject(kind, participant, key.why)
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
                self._input_category[inp.kind],
                input=inp.kind.value,
                key=inp.key,
                sid=inp.sid,
                why="no session for this participant",
            )
            return
        self._feed(found, inp)

    def _create(self, key: str, participant: rtc.RemoteParticipant) -> None:
        session = Session(key, participant, self._config.history_limit, time.time())
        if self._persist is not None:
            self._persist.observe(session)
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
        if self._persist is not None and self._persist.begin():
            return  # the stored sessions first: the restore reconciles once it has them
        present = list(room.remote_participants.values())
        present_sids = {p.sid for p in present}
        for session in list(self._sessions.values()):
            if session._state in self._connected and session._sid not in present_sids:
                self._feed(session, Input(InputKind.DISCONNECTED, session._key, sid=session._sid))
        for participant in present:
            # A safety net, not a source of takeovers: a participant that is present
            # but not bound gets a session only when its key has none (it may be an
            # older tab the session moved away from).
            bound = self._by_sid.get(participant.sid)
            if bound is None:
                self._adopt_unbound(participant)
                continue
            if bound._state is State.GRACE:
                self._submit(InputKind.CONNECTED, participant)  # the same connection is back
                continue
            if bound._state not in self._connected:
                continue
            if participant.state == _ACTIVE and bound._state is State.CONNECTING:
                self._submit(InputKind.ACTIVE, participant)
            for publication in participant.track_publications.values():
                if publication.sid not in bound._tracks:
                    self._submit(InputKind.TRACK_PUBLISHED, participant, publication=publication)

    def _adopt_unbound(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind in self._config.kinds and participant.sid:
            key = self._key_of(InputKind.CONNECTED, participant)
            if key is not None and key not in self._sessions:
                self._create(key, participant)


class _BadKey(NamedTuple):
    why: str


def session_key(config: LifecycleConfig, participant: rtc.RemoteParticipant) -> str | _BadKey:
    """``participant``'s session key under ``config``, or why it has none. Never raises."""
    try:
        key = config.key_of(participant)
    except Exception as exc:
        return _BadKey(f"session_key raised {type(exc).__name__}: {exc}")
    if not isinstance(key, str) or not key:
        return _BadKey(f"empty or non-string session key {key!r}")
    return key


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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
