"""Room intake: the room's event handlers, turning each event once into an :class:`Input`.

:class:`RoomIntake` is the only object that knows ``rtc.Room`` event names. It
finds the session an input is for (by sid, else by session key:
:meth:`RoomIntake.key_of`), creates sessions for new participants, keeps
sessions in line with the room after an attach or a reconnect
(:meth:`RoomIntake.reconcile`), and catches a newly bound connection up with
what it already has (:meth:`RoomIntake.adopt`). Everything past routing is the
session runtime's (:mod:`._runtime`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from livekit import rtc

from ._events import Input, InputKind
from ._log import ManagerLog
from ._runtime import SessionRuntime
from .config import LifecycleConfig
from .session import Session, reason_name

if TYPE_CHECKING:
    from ._persistence import Persistence

__all__ = ["RoomIntake", "session_key"]

_ACTIVE = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
_CONNECTED = InputKind.CONNECTED
_ACTIVATE = InputKind.ACTIVE
_PUBLISHED = InputKind.TRACK_PUBLISHED


class RoomIntake:
    """One room's handlers, feeding a :class:`~._runtime.SessionRuntime` (see the module doc)."""

    def __init__(
        self,
        config: LifecycleConfig,
        log: ManagerLog,
        runtime: SessionRuntime,
        *,
        on_room_disconnected: Callable[[], None],
    ) -> None:
        self._config = config
        self._kinds = config.kinds
        self._log = log
        self._stats = log.stats
        self._runtime = runtime
        self._sessions = runtime.sessions
        self._by_sid = runtime.by_sid
        self._on_room_disconnected_cb = on_room_disconnected
        self._connected = runtime.connected
        self._cleaned = runtime.chart.group("cleaned") if runtime.chart.groups else ()
        self.room: rtc.Room | None = None
        self.last_room: rtc.Room | None = None
        """The last attached room: a shutdown detaches first, and its logs still need the name."""
        self.handlers: list[tuple[str, Callable[..., None]]] = []
        self._reconcile_on_connect = False
        self.persist: Persistence | None = None
        """A durable store's side (restore, held events): see :mod:`._persistence`."""

    def room_name(self) -> str | None:
        room = self.last_room
        return None if room is None else room.name

    def register(self, room: rtc.Room, *, adopt_later: bool = False) -> None:
        """Listen to ``room`` and adopt who is already in it (``attach`` checked ``room``).

        With ``adopt_later`` the participants already present are adopted on the
        event loop's next turn (or before the room's next event, whichever comes
        first), never inside this call: the caller's code that runs before its next
        ``await`` (registering listeners) then sees every notification they cause.
        """
        self.room = room
        self.last_room = room
        # Room.connect() fills remote_participants without emitting events, so
        # a room attached before it connects is reconciled once it has.
        self._reconcile_on_connect = not room.isconnected()
        self.handlers = [
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
        for name, handler in self.handlers:
            room.on(name, handler)  # type: ignore[arg-type]
        self._log.info("handlers.registered", "handlers", events=[n for n, _ in self.handlers])
        loop = _running_loop() if adopt_later else None
        if loop is not None:
            # The same catch-up as for a room that connects later: once, first thing.
            self._reconcile_on_connect = True
            loop.call_soon(self._catch_up)
        else:
            self.reconcile()

    def unregister(self) -> None:
        room = self.room
        if room is None:
            return
        for name, handler in self.handlers:
            room.off(name, handler)  # type: ignore[arg-type]
        self.handlers = []
        self._log.info("handlers.removed", "handlers")
        self.room = None

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
        room = self.room
        if (
            self._reconcile_on_connect
            and room is not None
            and room.isconnected()
            and not self._runtime.closing
        ):
            self._reconcile_on_connect = False
            self.reconcile()
            holding = self.persist is not None and self.persist.holding
            if leaving is not None and leaving.sid not in self._by_sid and not holding:
                self.adopt_unbound(leaving)

    def _on_room_reconnecting(self) -> None:
        self._log.info("room.reconnecting", "connect")

    def _on_room_reconnected(self) -> None:
        self._log.info("room.reconnected", "connect")
        self.reconcile()

    def _on_room_disconnected(self, reason: int | None = None) -> None:
        self._log.info("room.disconnected", "shutdown", reason=reason_name(reason))
        if self._config.close_on_room_disconnect and not self._runtime.closing:
            self._on_room_disconnected_cb()

    # ------------------------------------------------------------------ input routing

    def submit(
        self,
        kind: InputKind,
        participant: rtc.RemoteParticipant,
        publication: rtc.RemoteTrackPublication | None = None,
    ) -> None:
        """Handle ``participant``'s event ``kind`` as if the room had emitted it."""
        self._submit(kind, participant, publication=publication)

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
        persist = self.persist
        if persist is not None and persist.holding:  # stored sessions first
            persist.hold(
                functools.partial(self._submit, kind, participant, publication=publication)
            )
            return
        stats = self._stats
        stats["events"] += 1
        if self._runtime.closing:
            stats["ignored_after_close"] += 1
            self._log.debug("event.ignored", "handlers", input=kind.value, why="manager closed")
            return
        try:
            if participant.kind not in self._kinds:
                stats["ignored_kind"] += 1
                self._log.debug(
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
            session = None if kind is _CONNECTED else self._by_sid.get(sid)
            key = session._key if session is not None else self.key_of(kind, participant)
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
            self.route(inp)
        else:  # what route would find: the session bound to this sid
            self._runtime.feed(session, inp)

    def key_of(self, kind: InputKind, participant: rtc.RemoteParticipant) -> str | None:
        """``participant``'s session key; ``None`` (logged, counted) when it has none."""
        key = session_key(self._config, participant)
        if isinstance(key, _BadKey):
            self._reject(kind, participant, key.why)
            return None
        return key

    def _reject(self, kind: InputKind, participant: object, why: str) -> None:
        self._stats["rejected_input"] += 1
        self._log.warning(
            "event.rejected",
            "handlers",
            input=kind.value,
            identity=getattr(participant, "identity", None),
            sid=getattr(participant, "sid", None),
            why=why,
        )

    def route(self, inp: Input) -> None:
        """Find ``inp``'s session by sid, else key; a connect with none starts one."""
        runtime = self._runtime
        session = self._sessions.get(inp.key)
        if inp.kind == _CONNECTED:
            if session is None:
                if runtime.closing:
                    # Queued behind a cleanup when shutdown began: too late to start a session.
                    self._stats["ignored_after_close"] += 1
                    self._log.debug("event.ignored", "connect", key=inp.key, why="manager closed")
                    return
                assert inp.participant is not None
                runtime.create(inp.key, inp.participant)
            else:
                runtime.feed(session, inp)
            return
        if not inp.sid:
            return  # a timer's or the shutdown's, for a session that no longer exists
        found = self._by_sid.get(inp.sid) or session
        if found is None:
            self._stats["ignored_stale"] += 1
            self._log.debug(
                "event.ignored",
                runtime.input_category(inp.kind),
                input=str(inp.kind),
                key=inp.key,
                sid=inp.sid,
                why="no session for this participant",
            )
            return
        runtime.feed(found, inp)

    def adopt(self, session: Session) -> None:
        """Catch up with what a newly bound participant already has: tracks, ACTIVE state.

        The runtime's ``on_bound``: applied inside the step that bound it, so the
        session is ``active`` as soon as the connect that bound it was handled.
        """
        participant = session._participant
        if participant is None:
            return
        runtime = self._runtime
        sid = session._sid  # the participant's: it is the one bound to the session
        key = session._key
        for track_sid in list(participant.track_publications):
            tracks = session._tracks
            if tracks is None or track_sid not in tracks:
                runtime.apply(session, Input(_PUBLISHED, key, sid=sid, track_sid=track_sid))
        if participant.state == _ACTIVE:
            runtime.apply(session, Input(_ACTIVATE, key, sid=sid))

    def reconcile(self) -> None:
        """Bring sessions in line with ``room.remote_participants`` (attach, room reconnected)."""
        room = self.room
        if room is None:
            return
        if self.persist is not None and self.persist.begin():
            return  # the stored sessions first: the restore reconciles once it has them
        runtime = self._runtime
        present = list(room.remote_participants.values())
        present_sids = {p.sid for p in present}
        for session in list(self._sessions.values()):
            if session._state in self._connected and session._sid not in present_sids:
                runtime.feed(session, Input(InputKind.DISCONNECTED, session._key, sid=session._sid))
        for participant in present:
            # A safety net, not a source of takeovers: a participant that is present
            # but not bound gets a session only when its key has none (it may be an
            # older tab the session moved away from).
            bound = self._by_sid.get(participant.sid)
            if bound is None:
                self.adopt_unbound(participant)
                continue
            state = bound._state
            if state in self._cleaned:
                self._submit(InputKind.CONNECTED, participant)  # the same connection is back
                continue
            if state not in self._connected:
                continue
            if participant.state == _ACTIVE and runtime.applies(_ACTIVATE, state):
                self._submit(InputKind.ACTIVE, participant)
            tracks = bound._tracks or ()
            for publication in participant.track_publications.values():
                if publication.sid not in tracks:
                    self._submit(InputKind.TRACK_PUBLISHED, participant, publication=publication)

    def adopt_unbound(self, participant: rtc.RemoteParticipant) -> None:
        """A session for ``participant`` (already in the room) unless its key has one."""
        if participant.kind in self._config.kinds and participant.sid:
            key = self.key_of(InputKind.CONNECTED, participant)
            if key is not None and key not in self._sessions:
                self._runtime.create(key, participant)


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
