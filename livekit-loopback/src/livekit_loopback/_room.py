"""Room state: who is in which room, what each participant publishes, and who hears about it.

Pure state and fan-out, no I/O of its own: messages go out through each
participant's :class:`SignalLink`, which queues them. Every method here is
synchronous, so one room change and the updates it causes happen atomically
on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models
from livekit.protocol import rtc as signal

from ._data_tracks import DataSubscriptions
from ._tokens import JoinGrant

if TYPE_CHECKING:
    from ._downlink import Downlink
    from ._media import TrackFeed
    from ._peer import Peer
    from ._rtp_relay import LayerChoice

__all__ = ["Participant", "ParticipantView", "Room", "SignalLink"]

_JOINED = models.ParticipantInfo.JOINED
_ACTIVE = models.ParticipantInfo.ACTIVE
_DISCONNECTED = models.ParticipantInfo.DISCONNECTED


class SignalLink(Protocol):
    """One signalling WebSocket, seen from the room: queue messages, close after them."""

    @property
    def closed(self) -> bool: ...

    def send(self, message: signal.SignalResponse) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(eq=False)
class Participant:
    """One connection of one identity (a new connection gets a new participant and sid)."""

    room: Room
    info: models.ParticipantInfo
    grant: JoinGrant
    single_pc: bool
    link: SignalLink | None
    peer: Peer | None = None
    # Tracks are announced once the client's offer carries them, and dropped
    # once an offer no longer does (the SDK sends no message to unpublish).
    # pending_tracks: AddTrackRequest cid -> track not negotiated yet;
    # track_cids: published track sid -> the msid track id its offer carries.
    pending_tracks: dict[str, models.TrackInfo] = field(default_factory=dict)
    track_cids: dict[str, str] = field(default_factory=dict)
    # Media: feeds: msid track id -> what the client sends on it;
    # downlink: what the server forwards to it; opted_in / opted_out: track
    # sids it asked for / refused with UpdateSubscription (over auto_subscribe).
    auto_subscribe: bool = True
    feeds: dict[str, TrackFeed] = field(default_factory=dict)
    downlink: Downlink | None = None
    opted_in: set[str] = field(default_factory=set)
    opted_out: set[str] = field(default_factory=set)
    # track sid -> the layer it asked for (UpdateTrackSettings), kept for
    # subscriptions to come.
    track_settings: dict[str, LayerChoice] = field(default_factory=dict)
    data_subscriptions: DataSubscriptions = field(default_factory=DataSubscriptions)
    lost_timer: asyncio.TimerHandle | None = None
    dropped: bool = False
    removed: bool = False

    @property
    def identity(self) -> str:
        return self.info.identity

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def hidden(self) -> bool:
        return self.grant.hidden

    def changed(self) -> None:
        """Record a change of ``info`` (clients ignore updates whose version did not grow)."""
        self.info.version += 1

    def send(self, message: signal.SignalResponse) -> None:
        """Queue ``message`` on the live signal link, if there is one."""
        if self.link is not None and not self.link.closed:
            self.link.send(message)

    def snapshot(self) -> models.ParticipantInfo:
        """A copy of ``info`` that later changes do not affect."""
        copy = models.ParticipantInfo()
        copy.CopyFrom(self.info)
        return copy


class Room:
    """A named room and the participants currently in it, in join order."""

    def __init__(self, name: str, sid: str) -> None:
        self.name = name
        self.sid = sid
        self.created_at = time.time()
        self.participants: dict[str, Participant] = {}

    def __iter__(self) -> Iterator[Participant]:
        return iter(list(self.participants.values()))

    def info(self) -> models.Room:
        created = int(self.created_at)
        return models.Room(
            sid=self.sid,
            name=self.name,
            creation_time=created,
            creation_time_ms=int(self.created_at * 1000),
            num_participants=sum(1 for p in self if not p.hidden),
        )

    def visible_to(self, viewer: Participant | None) -> list[models.ParticipantInfo]:
        """Everyone ``viewer`` may see (hidden participants are invisible), itself excluded."""
        return [p.snapshot() for p in self if p is not viewer and not p.hidden]

    def broadcast(
        self,
        subject: Participant,
        info: models.ParticipantInfo | None = None,
        *,
        include_self: bool = False,
    ) -> None:
        """Tell the room about ``subject`` (its current info unless ``info`` is given).

        Hidden participants are announced to nobody but themselves.
        """
        update = signal.SignalResponse(
            update=signal.ParticipantUpdate(participants=[info or subject.snapshot()])
        )
        for member in self:
            if member is subject:
                if include_self:
                    member.send(update)
            elif not subject.hidden:
                member.send(update)

    def add(self, participant: Participant) -> None:
        self.participants[participant.identity] = participant

    def discard(self, participant: Participant) -> bool:
        """Forget ``participant`` if it is the current one for its identity."""
        if self.participants.get(participant.identity) is participant:
            del self.participants[participant.identity]
            return True
        return False


def new_participant_info(
    grant: JoinGrant, sid: str, client_protocol: int
) -> models.ParticipantInfo:
    """The ``ParticipantInfo`` of a participant that has just joined."""
    now = time.time()
    return models.ParticipantInfo(
        sid=sid,
        identity=grant.identity,
        name=grant.name,
        metadata=grant.metadata,
        attributes=dict(grant.attributes),
        kind=grant.kind,  # type: ignore[arg-type]
        state=_JOINED,
        joined_at=int(now),
        joined_at_ms=int(now * 1000),
        version=1,
        permission=grant.permission(),
        client_protocol=client_protocol,
    )


def disconnected_info(participant: Participant, reason: int) -> models.ParticipantInfo:
    """``participant``'s last info: DISCONNECTED, with ``reason``."""
    info = participant.snapshot()
    info.state = _DISCONNECTED
    info.disconnect_reason = reason  # type: ignore[assignment]
    info.version += 1
    return info


def is_active(participant: Participant) -> bool:
    return participant.info.state == _ACTIVE


@dataclass(frozen=True, slots=True)
class ParticipantView:
    """What the server knows about one participant, at one moment (see ``LoopbackServer``).

    Attributes:
        identity: The participant identity.
        sid: The participant sid (``PA_...``); a new connection gets a new one.
        state: ``"joined"`` until its PeerConnection connects, then ``"active"``.
        kind: ``livekit.protocol.models.ParticipantInfo.Kind`` value.
        hidden: Joined with a ``hidden`` grant (invisible to others).
        tracks: Sids of the tracks it publishes.
        signal_connected: Its signalling WebSocket is up. ``False`` while the
            server waits for a resume after a lost connection (or after
            :meth:`LoopbackServer.drop_signal`).
        attributes: Its participant attributes.
        subscribed: Sids of the tracks the server forwards to it now.
    """

    identity: str
    sid: str
    state: str
    kind: int
    hidden: bool
    tracks: tuple[str, ...]
    signal_connected: bool
    attributes: dict[str, str]
    subscribed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, participant: Participant) -> ParticipantView:
        info = participant.info
        return cls(
            identity=info.identity,
            sid=info.sid,
            state=models.ParticipantInfo.State.Name(info.state).lower(),
            kind=int(info.kind),
            hidden=participant.hidden,
            tracks=tuple(track.sid for track in info.tracks),
            signal_connected=participant.link is not None and not participant.link.closed,
            attributes=dict(info.attributes),
            subscribed=(
                frozenset() if participant.downlink is None else participant.downlink.track_sids
            ),
        )
