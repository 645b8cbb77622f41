"""Real rooms and real ``RoomEvent`` protobufs, built before the clock starts.

Every figure feeds a real ``rtc.Room`` through ``Room._on_room_event``: the
SDK's own translation creates the ``RemoteParticipant`` objects and emits the
Python events both our manager and the baseline listen to. Events are built
here in advance so that protobuf construction is never timed.

A ``RoomEvent`` cannot be replayed into a second room: the SDK keeps the
event's ``ParticipantInfo`` as the participant's ``_info`` and mutates it
(``participant_active`` sets its state). Build a fresh :class:`Script` for
every room.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from livekit import rtc
from livekit.rtc._ffi_client import INVALID_HANDLE
from livekit.rtc._proto import participant_pb2 as proto_participant
from livekit.rtc._proto import room_pb2 as proto_room

from livekit_lifecycle.testing import RoomDriver

RoomEvent = proto_room.RoomEvent

CLIENT_INITIATED = proto_participant.CLIENT_INITIATED
PARTICIPANT_REMOVED = proto_participant.PARTICIPANT_REMOVED


def connected(identity: str, sid: str, *, active: bool = False) -> RoomEvent:
    """``participant_connected`` for a standard participant (already ACTIVE if ``active``)."""
    event = RoomEvent()
    owned = event.participant_connected.info
    owned.handle.id = INVALID_HANDLE
    info = owned.info
    info.identity = identity
    info.sid = sid
    info.kind = proto_participant.PARTICIPANT_KIND_STANDARD
    info.state = (
        proto_participant.PARTICIPANT_STATE_ACTIVE
        if active
        else proto_participant.PARTICIPANT_STATE_JOINED
    )
    return event


def activated(identity: str) -> RoomEvent:
    """``participant_active``."""
    event = RoomEvent()
    event.participant_active.participant_identity = identity
    return event


def disconnected(identity: str, reason: int = CLIENT_INITIATED) -> RoomEvent:
    """``participant_disconnected`` with ``reason``."""
    event = RoomEvent()
    event.participant_disconnected.participant_identity = identity
    event.participant_disconnected.disconnect_reason = reason  # type: ignore[assignment]
    return event


@dataclass(slots=True)
class Lifecycle:
    """The three room events of one user's visit: connected, active, disconnected."""

    identity: str
    connect: RoomEvent
    activate: RoomEvent
    disconnect: RoomEvent


def lifecycles(count: int, prefix: str = "user", reason: int = CLIENT_INITIATED) -> list[Lifecycle]:
    """``count`` visits by distinct identities ``{prefix}{i}`` with sids ``PA_{prefix}{i}``."""
    return [
        Lifecycle(
            f"{prefix}{i}",
            connected(f"{prefix}{i}", f"PA_{prefix}{i}"),
            activated(f"{prefix}{i}"),
            disconnected(f"{prefix}{i}", reason),
        )
        for i in range(count)
    ]


def populate(room: rtc.Room, count: int, prefix: str = "present") -> None:
    """Put ``count`` ACTIVE participants into ``room`` through the SDK's own translation."""
    feed = room._on_room_event
    for i in range(count):
        feed(connected(f"{prefix}{i}", f"PA_{prefix}{i}", active=True))


@contextmanager
def real_room(name: str = "bench") -> Iterator[rtc.Room]:
    """A real ``rtc.Room``, connected as an agent's is (needs a running loop), released on exit.

    Connected the way :class:`RoomDriver` does it (the SDK's state, no native
    handle), so a subject sees what it sees in production once
    ``Room.connect()`` has returned.
    """
    driver = RoomDriver(name)
    try:
        yield driver.room
    finally:
        driver.close()
