"""The seed's hand-written design, as the baseline every figure is compared against.

A faithful port of ``cleanup_handlers.py`` from the seed
(``/work/shared/seeds/000_...txt``): a dict of sessions keyed by participant
sid, an ``asyncio.Lock`` per participant as the debounce, ``create_task`` for
the cleanup and for the delayed removal, and a sequential cleanup loop at
shutdown. It lives here, not in the package: it is what the package replaces.

Deliberate choices, all in the baseline's favour (so our ratios are honest):

* The seed's module-level dicts are instance attributes, so runs do not share
  state; access costs the same.
* Log calls use lazy ``%s`` arguments instead of f-strings, so a disabled
  level costs nothing but the call.
* The seed has no ``participant_active`` handler; the baseline gets the
  cheapest equivalent (one dict write) so both sides see the same events.
* ``on_change`` is benchmark instrumentation (called with the sid and a step
  name), the counterpart of our manager's ``state_changed`` listeners.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from livekit import rtc

__all__ = ["SeedCleanup"]

_log = logging.getLogger("benchmarks.baseline")

Step = Callable[[str, str], None]
"""``on_change(sid, step)``; step is connected, active, disconnecting, cleaned, grace or removed."""


def _no_change(sid: str, step: str) -> None:
    pass


class SeedCleanup:
    """``register_cleanup_handlers`` / ``graceful_shutdown`` from the seed, per room."""

    def __init__(
        self,
        *,
        removal_delay: float = 30.0,
        clear_user_callback: Callable[[str | None], Any] | None = None,
        on_change: Step | None = None,
    ) -> None:
        self.active_sessions: dict[str, dict[str, Any]] = {}
        self.cleanup_locks: dict[str, asyncio.Lock] = {}
        self.removal_delay = removal_delay
        self.clear_user_callback = clear_user_callback
        self.on_change: Step = on_change or _no_change
        self._room: rtc.Room | None = None

    # ------------------------------------------------------------------ registration

    def register(self, room: rtc.Room) -> None:
        """``register_cleanup_handlers(room)``; also adopts participants already present.

        The seed registers plain nested functions with ``room.on``; so do we.
        Adopting present participants is what a seed user would write to match
        our ``attach``: call the connected handler for each.
        """
        self._room = room

        def participant_connected(participant: rtc.RemoteParticipant) -> None:
            self.handle_participant_connected(participant)

        def participant_active(participant: rtc.RemoteParticipant) -> None:
            session = self.active_sessions.get(participant.sid)
            if session is not None:
                session["active"] = True
                self.on_change(participant.sid, "active")

        def participant_disconnected(participant: rtc.RemoteParticipant) -> None:
            self.handle_participant_disconnected(participant)

        def track_published(
            publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
        ) -> None:
            session = self.active_sessions.get(participant.sid)
            if session is not None:
                session["tracks"].add(publication.sid)
            _log.debug("[TRACK] Published: %s by participant %s", publication.sid, participant.sid)

        room.on("participant_connected", participant_connected)
        room.on("participant_active", participant_active)
        room.on("participant_disconnected", participant_disconnected)
        room.on("track_published", track_published)
        _log.info("[EVENT HANDLERS] Registered participant lifecycle handlers")
        for participant in list(room.remote_participants.values()):
            self.handle_participant_connected(participant)

    # ------------------------------------------------------------------ handlers

    def handle_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        sid = participant.sid
        _log.info("[CONNECT] Participant connected: sid=%s, identity=%s", sid, participant.identity)
        stale = self.active_sessions.get(sid)
        if stale is not None and stale["cleanup_done"]:
            _log.info("[CONNECT] Clearing stale session for %s", sid)
            stale["tracks"].clear()
        self.active_sessions[sid] = {
            "user_id": None,
            "tracks": set(),
            "cleanup_done": False,
            "connected_at": time.time(),
        }
        if sid not in self.cleanup_locks:
            self.cleanup_locks[sid] = asyncio.Lock()
        self.on_change(sid, "connected")
        if participant.state == rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE:
            self.active_sessions[sid]["active"] = True
            self.on_change(sid, "active")

    def handle_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        _log.info("[DISCONNECT] Participant disconnected: sid=%s", participant.sid)
        # Room handlers must be synchronous: the seed hands the work to a task
        # and keeps no reference to it (fire and forget, as written there).
        asyncio.create_task(  # noqa: RUF006
            self.cleanup_participant_tracks(
                participant.sid, participant.identity, remove_later=True
            )
        )
        self.on_change(participant.sid, "disconnecting")

    async def cleanup_participant_tracks(
        self, sid: str, identity: str | None = None, *, remove_later: bool = False
    ) -> None:
        lock = self.cleanup_locks.get(sid)
        if lock is None:
            lock = self.cleanup_locks[sid] = asyncio.Lock()
        async with lock:
            session = self.active_sessions.get(sid)
            if session is None or session["cleanup_done"]:
                _log.debug("[CLEANUP] Skipping %s: already cleaned", sid)
                return
            _log.info("[CLEANUP] Starting cleanup for participant %s (identity: %s)", sid, identity)
            _log.info("[CLEANUP] Found %s tracks in session", len(session["tracks"]))
            session["tracks"].clear()
            if self.clear_user_callback is not None:
                result = self.clear_user_callback(session["user_id"])
                if inspect.isawaitable(result):
                    await result
            session["cleanup_done"] = True
            _log.info("[CLEANUP] Completed cleanup for participant %s", sid)
            self.on_change(sid, "cleaned")
            if remove_later:
                asyncio.create_task(  # noqa: RUF006
                    self.remove_session_after_delay(sid, self.removal_delay)
                )
                self.on_change(sid, "grace")

    async def remove_session_after_delay(self, sid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        session = self.active_sessions.get(sid)
        if session is not None and session["cleanup_done"]:
            del self.active_sessions[sid]
            self.cleanup_locks.pop(sid, None)
            _log.info("[SESSION] Removing session data for %s after %ss", sid, delay)
            self.on_change(sid, "removed")

    # ------------------------------------------------------------------ public helpers

    def update_session_user(self, sid: str, user_id: str) -> None:
        session = self.active_sessions.get(sid)
        if session is not None:
            session["user_id"] = user_id

    def get_session_info(self, sid: str) -> dict[str, Any] | None:
        return self.active_sessions.get(sid)

    async def graceful_shutdown(self, tts: Any = None) -> None:
        """Clean every participant one after the other, close TTS, clear everything."""
        _log.info("[SHUTDOWN] Cleaning %s sessions", len(self.active_sessions))
        for sid in list(self.active_sessions):
            await self.cleanup_participant_tracks(sid)
        if tts is not None:
            await tts.aclose()
        self.active_sessions.clear()
        self.cleanup_locks.clear()
        _log.info("[SHUTDOWN] Shutdown complete")
