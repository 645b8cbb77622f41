"""The chart's guards and effects, as functions over a :class:`Session`, keyed by chart name.

:data:`~livekit_lifecycle.statechart.PARTICIPANT_CHART` names each guard and
each trigger; this module says what they do. Most are plain functions of the
``transitions`` event data (``ev.model`` is the session, ``ev.kwargs["input"]``
the :class:`~livekit_lifecycle._events.Input` that fired the trigger). The
few that need the runtime (its config, its sid index, its log) are closures over it, built once by
:func:`guards` and :func:`effects`; the runtime machine calls them directly,
so neither kind costs more than a function call per transition. They are the
runtime's: the only code besides :mod:`._runtime` that writes a session's fields
or its bookkeeping record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from livekit import rtc

from ._bookkeeping import record
from ._machine import EventData
from .session import Session
from .statechart import State

if TYPE_CHECKING:
    from ._log import ManagerLog
    from .config import LifecycleConfig

__all__ = ["ActionHost", "bind", "effects", "guards"]

_ACTIVE = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
_SUPERSEDED_LIMIT = 16
"""Sids of replaced connections remembered per session (oldest forgotten first)."""


class ActionHost(Protocol):
    """What the guards and effects read from the runtime that runs them."""

    config: LifecycleConfig
    closing: bool
    by_sid: dict[str, Session]
    connected: tuple[State, ...]
    log: ManagerLog


# ------------------------------------------------------------------ guards


def is_current_sid(ev: EventData) -> bool:
    return bool(ev.kwargs["input"].sid == ev.model._sid)


def is_new_sid(ev: EventData) -> bool:
    participant = ev.kwargs["input"].participant
    return participant is not None and participant.sid != ev.model._sid


def has_pending_connection(ev: EventData) -> bool:
    rec = ev.model._record
    return rec is not None and rec.pending is not None


def is_current_timer(ev: EventData) -> bool:
    rec = ev.model._record
    return rec is not None and bool(ev.kwargs["input"].epoch == rec.epoch)


def participant_is_active(ev: EventData) -> bool:
    participant = ev.model._participant
    return participant is not None and (
        participant.state == _ACTIVE or bool(participant.track_publications)
    )


def stored_cleaned(ev: EventData) -> bool:
    return bool(ev.kwargs["input"].cleaned)


def connection_present(ev: EventData) -> bool:
    return ev.kwargs["input"].participant is not None


def guards(host: ActionHost) -> dict[str, Callable[[EventData], bool]]:
    """Every guard of the chart, by name."""

    def grace_allowed(ev: EventData) -> bool:
        config = host.config
        return (
            config.grace_period > 0
            and not host.closing
            and ev.model._disconnect_reason not in config.no_grace_reasons
        )

    return {
        "is_current_sid": is_current_sid,
        "is_new_sid": is_new_sid,
        "has_pending_connection": has_pending_connection,
        "grace_allowed": grace_allowed,
        "is_current_timer": is_current_timer,
        "participant_is_active": participant_is_active,
        "stored_cleaned": stored_cleaned,
        "connection_present": connection_present,
    }


# ------------------------------------------------------------------ effects


def disconnect(ev: EventData) -> None:
    session: Session = ev.model
    session._disconnect_reason = ev.kwargs["input"].reason
    session._disconnected_at = time.time()


def takeover(ev: EventData) -> None:
    session: Session = ev.model
    rec = record(session)
    superseded = rec.superseded
    if superseded is None:
        superseded = rec.superseded = {}
    superseded[session._sid] = None
    if len(superseded) > _SUPERSEDED_LIMIT:
        del superseded[next(iter(superseded))]
    rec.pending = ev.kwargs["input"].participant
    session._disconnect_reason = None
    session._disconnected_at = time.time()


def restore(ev: EventData) -> None:
    """A restored session takes the connection that is still in the room, if any."""
    session: Session = ev.model
    inp = ev.kwargs["input"]
    if inp.cleaned:
        return
    if inp.participant is not None:
        session._participant = inp.participant
    elif session._disconnected_at is None:
        session._disconnected_at = time.time()


def cleanup_done(ev: EventData) -> None:
    # Only our references go: the SDK owns the tracks and unpublishes them itself.
    session: Session = ev.model
    session._tracks = None
    session._participant = None
    session._cleanups += 1


def bind(by_sid: dict[str, Session], session: Session, participant: rtc.RemoteParticipant) -> None:
    """Bind ``session`` to a new connection ``participant`` (and the sid index with it)."""
    if by_sid.get(session._sid) is session:
        del by_sid[session._sid]
    identity = participant.identity
    session._identity = session._key if identity == session._key else identity
    session._sid = participant.sid
    session._participant = participant
    session._tracks = None
    session._reconnects += 1
    session._connected_at = time.time()
    session._disconnected_at = None
    session._disconnect_reason = None
    by_sid[session._sid] = session


def effects(host: ActionHost) -> dict[str, Callable[[EventData], None]]:
    """Every trigger's effect, by trigger name (triggers without one are absent)."""
    by_sid = host.by_sid
    connected = host.connected
    log = host.log

    def shutdown(ev: EventData) -> None:
        session: Session = ev.model
        if session._state in connected:
            session._disconnect_reason = None
            session._disconnected_at = time.time()

    def publish_track(ev: EventData) -> None:
        session: Session = ev.model
        track_sid = ev.kwargs["input"].track_sid
        tracks = session._tracks
        if tracks is None:
            session._tracks = {track_sid}
        else:
            tracks.add(track_sid)
        log.session(logging.DEBUG, "track.published", "track", session, track=track_sid)

    def unpublish_track(ev: EventData) -> None:
        session: Session = ev.model
        track_sid = ev.kwargs["input"].track_sid
        tracks = session._tracks
        if tracks is not None:
            tracks.discard(track_sid)
            if not tracks:
                session._tracks = None
        log.session(logging.DEBUG, "track.unpublished", "track", session, track=track_sid)

    def reconnect(ev: EventData) -> None:
        bind(by_sid, ev.model, ev.kwargs["input"].participant)

    def rejoin(ev: EventData) -> None:
        session: Session = ev.model
        rec = record(session)
        pending, rec.pending = rec.pending, None
        assert pending is not None
        bind(by_sid, session, pending)

    return {
        "publish_track": publish_track,
        "unpublish_track": unpublish_track,
        "disconnect": disconnect,
        "takeover": takeover,
        "shutdown": shutdown,
        "cleanup_done": cleanup_done,
        "reconnect": reconnect,
        "rejoin": rejoin,
        "restore": restore,
    }
