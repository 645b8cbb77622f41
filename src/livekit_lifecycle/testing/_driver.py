"""A driver for a real ``rtc.Room`` that needs no server."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import TracebackType

from livekit import rtc
from livekit.rtc._ffi_client import INVALID_HANDLE, FfiHandle
from livekit.rtc._proto import participant_pb2 as proto_participant
from livekit.rtc._proto import room_pb2 as proto_room
from livekit.rtc._proto import track_pb2 as proto_track

__all__ = ["RoomDriver"]

_ACTIVE = proto_participant.PARTICIPANT_STATE_ACTIVE
_JOINED = proto_participant.PARTICIPANT_STATE_JOINED


class RoomDriver:
    """Feeds real ``RoomEvent`` protobufs to a real ``rtc.Room`` through ``Room._on_room_event``.

    Build it inside a running event loop (``rtc.Room()`` needs one). Every
    method produces exactly what the Rust SDK would deliver for that
    situation, in the same order (see ``docs/testing.md``). Participant
    handles use the SDK's ``INVALID_HANDLE`` (0), so nothing is ever sent to
    the native library.

    Use it as an async context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        room_name: str = "test-room",
        *,
        agent_identity: str = "agent",
        connected: bool = True,
    ) -> None:
        self.room = rtc.Room()
        self.room._info.name = room_name
        self.room._info.sid = "RM_" + room_name
        self._sids = itertools.count(1)
        self._agent_identity = agent_identity
        if connected:
            self.join()

    def join(self, *present: str, active: bool = True) -> None:
        """The agent's own ``Room.connect()``, minus the native handle.

        Like the SDK, participants already in the room (``present``) are
        created silently: ``Room.connect`` emits no ``participant_connected``
        for them. Afterwards code that checks ``isconnected()`` or reads
        ``local_participant`` works. The driver joins at construction unless
        built with ``connected=False``.
        """
        self.room._ffi_handle = FfiHandle(INVALID_HANDLE)
        owned = proto_participant.OwnedParticipant()
        owned.handle.id = INVALID_HANDLE
        owned.info.identity = self._agent_identity
        owned.info.sid = self.new_sid()
        owned.info.kind = proto_participant.PARTICIPANT_KIND_AGENT
        self.room._local_participant = rtc.LocalParticipant(self.room._room_queue, owned)
        for identity in present:
            existing = proto_participant.OwnedParticipant()
            existing.handle.id = INVALID_HANDLE
            existing.info.identity = identity
            existing.info.sid = self.new_sid()
            existing.info.kind = proto_participant.PARTICIPANT_KIND_STANDARD
            existing.info.state = _ACTIVE if active else _JOINED
            self.room._create_remote_participant(existing)
        self.room._connection_state = proto_room.CONN_CONNECTED

    def connection_state(self, state: int) -> None:
        """``connection_state_changed`` (``rtc.ConnectionState`` value)."""
        event = proto_room.RoomEvent()
        event.connection_state_changed.state = state  # type: ignore[assignment]
        self.room._on_room_event(event)

    # ------------------------------------------------------------------ participants

    def new_sid(self, prefix: str = "PA_") -> str:
        """A fresh sid, unique within this driver."""
        return f"{prefix}{next(self._sids):06d}"

    def connect(
        self,
        identity: str,
        *,
        sid: str | None = None,
        active: bool = False,
        kind: int = proto_participant.PARTICIPANT_KIND_STANDARD,
        attributes: Mapping[str, str] | None = None,
        name: str = "",
        metadata: str = "",
    ) -> rtc.RemoteParticipant:
        """A participant joins: ``participant_connected`` (+ ``participant_active`` if ``active``).

        Like the SDK, raises if ``identity`` is already in the room: use
        :meth:`replace` for a second connection with the same identity.
        """
        event = proto_room.RoomEvent()
        owned = event.participant_connected.info
        owned.handle.id = INVALID_HANDLE
        info = owned.info
        info.identity = identity
        info.sid = sid or self.new_sid()
        info.kind = kind  # type: ignore[assignment]
        info.state = _JOINED
        info.name = name
        info.metadata = metadata
        if attributes:
            info.attributes.update(attributes)
        self.room._on_room_event(event)
        if active:
            self.activate(identity)
        return self.room.remote_participants[identity]

    def activate(self, identity: str) -> None:
        """``participant_active``: media can flow."""
        event = proto_room.RoomEvent()
        event.participant_active.participant_identity = identity
        self.room._on_room_event(event)

    def disconnect(
        self,
        identity: str,
        reason: int = proto_participant.CLIENT_INITIATED,
    ) -> rtc.RemoteParticipant:
        """``participant_disconnected`` with ``reason``; returns the departed participant object.

        Raises ``KeyError`` when ``identity`` is not in the room, as the SDK does.
        """
        participant = self.room.remote_participants[identity]
        event = proto_room.RoomEvent()
        event.participant_disconnected.participant_identity = identity
        event.participant_disconnected.disconnect_reason = reason  # type: ignore[assignment]
        self.room._on_room_event(event)
        return participant

    def refresh(
        self,
        identity: str,
        *,
        reason: int = proto_participant.CLIENT_INITIATED,
        active: bool = True,
    ) -> rtc.RemoteParticipant:
        """A browser refresh: the page leaves, then joins again with the same identity, new sid."""
        self.disconnect(identity, reason)
        return self.connect(identity, active=active)

    def replace(self, identity: str, *, active: bool = True) -> rtc.RemoteParticipant:
        """Same identity joins while present: the SDK reports the old one gone, then the new one."""
        self.disconnect(identity, proto_participant.DUPLICATE_IDENTITY)
        return self.connect(identity, active=active)

    def redeliver_disconnect(self, participant: rtc.RemoteParticipant) -> None:
        """Emit ``participant_disconnected`` again for a participant object that already left.

        The SDK itself cannot repeat it (it pops the participant first), but
        application code that forwards events, or several handlers racing,
        can: this is the "rapid repeated disconnect" a handler must survive.
        """
        self.room.emit("participant_disconnected", participant)

    # ------------------------------------------------------------------ tracks

    def publish_track(
        self,
        identity: str,
        *,
        track_sid: str | None = None,
        kind: int = proto_track.KIND_AUDIO,
        source: int = proto_track.SOURCE_MICROPHONE,
        name: str = "microphone",
    ) -> str:
        """``track_published`` for a remote track; returns its sid."""
        event = proto_room.RoomEvent()
        event.track_published.participant_identity = identity
        publication = event.track_published.publication
        publication.handle.id = INVALID_HANDLE
        info = publication.info
        info.sid = track_sid or self.new_sid("TR_")
        info.name = name
        info.kind = kind  # type: ignore[assignment]
        info.source = source  # type: ignore[assignment]
        info.remote = True
        self.room._on_room_event(event)
        return info.sid

    def unpublish_track(self, identity: str, track_sid: str) -> rtc.RemoteTrackPublication | None:
        """``track_unpublished``; returns the publication the SDK dropped (``None`` if it had none).

        Keep it to :meth:`redeliver_unpublish` the event later.
        """
        participant = self.room.remote_participants.get(identity)
        publication = None if participant is None else participant.track_publications.get(track_sid)
        event = proto_room.RoomEvent()
        event.track_unpublished.participant_identity = identity
        event.track_unpublished.publication_sid = track_sid
        self.room._on_room_event(event)
        return publication

    def redeliver_unpublish(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        """Emit ``track_unpublished`` again for a publication that is already gone.

        Like :meth:`redeliver_disconnect`: the SDK cannot repeat it (it drops
        the publication first), application code that forwards events can.
        """
        self.room.emit("track_unpublished", publication, participant)

    # ------------------------------------------------------------------ the agent's own connection

    def reconnecting(self) -> None:
        """The agent's connection is resuming (``reconnecting``)."""
        event = proto_room.RoomEvent()
        event.reconnecting.SetInParent()
        self.room._on_room_event(event)

    def reconnected(self) -> None:
        """The agent's connection is back (``reconnected``)."""
        event = proto_room.RoomEvent()
        event.reconnected.SetInParent()
        self.room._on_room_event(event)

    def full_reconnect(self) -> None:
        """The agent's full reconnect as the SDK reports it.

        Every remote participant is reported disconnected (reason unknown),
        then ``reconnecting``, then every one connects again with the **same
        sid** (and its tracks), then ``reconnected``.
        """
        before = [
            (
                p.identity,
                p.sid,
                p.state == _ACTIVE,
                p.kind,
                dict(p.attributes),
                list(p.track_publications),
            )
            for p in self.room.remote_participants.values()
        ]
        for identity, *_ in before:
            self.disconnect(identity, proto_participant.UNKNOWN_REASON)
        self.reconnecting()
        for identity, sid, active, kind, attributes, tracks in before:
            self.connect(identity, sid=sid, active=active, kind=kind, attributes=attributes)
            for track_sid in tracks:
                self.publish_track(identity, track_sid=track_sid)
        self.reconnected()

    def room_disconnected(self, reason: int = proto_participant.ROOM_DELETED) -> None:
        """The agent's own connection ended for good (``disconnected``)."""
        event = proto_room.RoomEvent()
        event.disconnected.reason = reason  # type: ignore[assignment]
        self.room._on_room_event(event)
        self.room._connection_state = proto_room.CONN_DISCONNECTED

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Detach the room from the (never used) native client so it can be collected."""
        self.room._ffi_handle = None

    async def __aenter__(self) -> RoomDriver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
