"""What the server does: joins, resumes, leaves, removals, tracks; one instance per server.

It follows the LiveKit server's observable behaviour, as the Rust SDK sees it:

* a join gets a ``JoinResponse`` listing everyone visible, and the room hears
  of the newcomer as JOINED, then ACTIVE once its PeerConnection connects;
* the same identity joining again replaces the old participant
  (``DUPLICATE_IDENTITY``), which the room hears of first;
* a signalling socket that closes without a ``leave`` keeps the participant
  for ``leave_timeout`` seconds, waiting for a resume (which gets a
  ``ReconnectResponse`` and a full snapshot); then it is disconnected with
  ``SIGNAL_CLOSE``;
* server-side removals send the participant a ``leave`` (action DISCONNECT)
  and tell the room the reason;
* a published track is forwarded to every other participant that subscribes
  to it (automatically unless it joined with ``auto_subscribe`` off, or
  explicitly with ``UpdateSubscription``), and data packets go to everyone
  else or to the identities they name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc.mediastreams import MediaStreamTrack
from livekit.protocol import models
from livekit.protocol import rtc as signal
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from . import _data_tracks as data_tracks
from ._data_tracks import DATA_TRACK
from ._downlink import Downlink
from ._log import get_logger
from ._media import TrackFeed
from ._peer import Peer, msid_track_ids, sending_tracks
from ._room import (
    Participant,
    Room,
    SignalLink,
    disconnected_info,
    is_active,
    new_participant_info,
)
from ._rtp_relay import Layer, LayerChoice, RtpRelay
from ._signal import JoinParams
from ._tokens import JoinGrant
from ._track_info import negotiated, requested, sdp_codecs

__all__ = ["RoomObserver", "RoomService", "ServiceSettings"]

Reason = int
_REASON = models.DisconnectReason
_DISCONNECT = signal.LeaveRequest.DISCONNECT
_RECONNECT = signal.LeaveRequest.RECONNECT
_SERVER_VERSION = "1.9.0"
_PROTOCOL = 16
_FLUSH_TIMEOUT = 2.0
# How long a client that was sent a leave gets to close its PeerConnection itself.
_LEAVE_READ_TIMEOUT = 0.5
Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    leave_timeout: float
    lost_signal_reason: Reason
    ping_interval: int
    ping_timeout: int
    forward_rtp: bool = True


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


def _reason_name(reason: Reason) -> str:
    try:
        return _REASON.Name(reason)
    except ValueError:
        return str(reason)


class RoomObserver(Protocol):
    """Hears of rooms made and closed and of agents leaving (the agent dispatcher)."""

    def room_created(self, room: Room, agents: Iterable[RoomAgentDispatch] | None) -> None: ...

    def participant_left(self, room: str, identity: str) -> None: ...

    def room_closed(self, room: str) -> None: ...


class RoomService:
    """Rooms and participants of one server, and every change that can happen to them."""

    def __init__(self, settings: ServiceSettings, spawn: Spawn) -> None:
        self.settings = settings
        self.rooms: dict[str, Room] = {}
        self._spawn = spawn
        # Sids of connections cut with drop_signal: their resumes are refused
        # for good, like a closed browser tab that never comes back.
        self._dropped: set[str] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self._peers: set[Peer] = set()
        self.observer: RoomObserver | None = None
        self._log = get_logger()

    # ------------------------------------------------------------------ observation

    def find(self, room: str, identity: str) -> Participant:
        """The current participant ``identity`` of ``room``.

        Raises:
            LookupError: when there is no such room or participant.
        """
        found = self.rooms.get(room)
        if found is None:
            raise LookupError(f"no room named {room!r} (rooms: {sorted(self.rooms)})")
        participant = found.participants.get(identity)
        if participant is None:
            raise LookupError(
                f"no participant {identity!r} in room {room!r}"
                f" (present: {sorted(found.participants)})"
            )
        return participant

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``predicate()`` holds; it is checked after every change.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not predicate():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.add(future)
            try:
                await asyncio.wait_for(future, remaining)
            except asyncio.TimeoutError:
                raise TimeoutError from None
            finally:
                self._waiters.discard(future)

    def changed(self) -> None:
        for future in list(self._waiters):
            if not future.done():
                future.set_result(None)

    # ------------------------------------------------------------------ joining

    def join(self, grant: JoinGrant, params: JoinParams, link: SignalLink) -> Participant:
        """A new connection: replace any participant with that identity, announce the new one."""
        room = self.room(grant.room, grant.room_config)
        old = room.participants.get(grant.identity)
        if old is not None:
            self.remove(old, _REASON.DUPLICATE_IDENTITY, tell_participant=True)
        info = new_participant_info(grant, _sid("PA_"), params.client_protocol)
        participant = Participant(
            room=room,
            info=info,
            grant=grant,
            single_pc=params.single_pc,
            link=link,
            auto_subscribe=params.auto_subscribe,
        )
        participant.peer = self._new_peer(participant)
        participant.downlink = self._new_downlink(participant)
        others = room.visible_to(participant)
        room.add(participant)
        link.send(
            signal.SignalResponse(
                join=signal.JoinResponse(
                    room=room.info(),
                    participant=participant.snapshot(),
                    other_participants=others,
                    server_version=_SERVER_VERSION,
                    server_info=models.ServerInfo(
                        edition=models.ServerInfo.Standard,
                        version=_SERVER_VERSION,
                        protocol=_PROTOCOL,
                        node_id="loopback",
                    ),
                    # The publisher PC is the one the client waits for; two-PC
                    # clients get the server's subscriber offer right after this.
                    subscriber_primary=False,
                    # 0 would panic the SDK's interval timer.
                    ping_interval=self.settings.ping_interval,
                    ping_timeout=self.settings.ping_timeout,
                )
            )
        )
        room.broadcast(participant)
        self._subscribe_to_room(participant)
        participant.downlink.negotiate()  # two PCs: the subscriber PC's first offer
        self._log.info(
            "participant.joined",
            room=room.name,
            identity=participant.identity,
            sid=participant.sid,
            protocol="v1" if params.single_pc else "v0",
            hidden=participant.hidden or None,
        )
        self.changed()
        return participant

    def room(self, name: str, config: RoomConfiguration | None = None) -> Room:
        """Room ``name``, created (with ``config``) if it does not exist.

        The observer hears of a new room (agents are dispatched to it).
        """
        found = self.rooms.get(name)
        if found is not None:
            return found
        room = self.rooms[name] = Room(name, _sid("RM_"))
        self._log.info("room.created", room=room.name, room_sid=room.sid)
        if self.observer is not None:
            self.observer.room_created(room, None if config is None else config.agents)
        self.changed()
        return room

    def resume(self, grant: JoinGrant, params: JoinParams, link: SignalLink) -> Participant | None:
        """A client reconnects its signalling for participant ``params.participant_sid``.

        Returns the participant, now bound to ``link``, or ``None`` when the
        resume was refused (the client was told, and ``link`` is closing).
        """
        sid = params.participant_sid
        room = self.rooms.get(grant.room)
        current = None if room is None else room.participants.get(grant.identity)
        if sid in self._dropped:
            # The client of a dropped connection is "gone": make its SDK give
            # up instead of escalating to a full reconnect with the same identity.
            self._refuse(link, sid, self.settings.lost_signal_reason, _DISCONNECT)
            return None
        if current is None or current.sid != sid or current.removed:
            # Too late (or unknown): the SDK then rejoins from scratch.
            self._refuse(link, sid, _REASON.STATE_MISMATCH, _RECONNECT)
            return None
        self._cancel_timer(current)
        previous, current.link = current.link, link
        if previous is not None and previous is not link:
            previous.close()
        link.send(
            signal.SignalResponse(
                reconnect=signal.ReconnectResponse(
                    server_info=models.ServerInfo(
                        edition=models.ServerInfo.Standard,
                        version=_SERVER_VERSION,
                        protocol=_PROTOCOL,
                        node_id="loopback",
                    )
                )
            )
        )
        # A full snapshot: the SDK synthesizes a disconnect for anyone it
        # knew who is missing from what it hears right after a resume.
        link.send(
            signal.SignalResponse(
                update=signal.ParticipantUpdate(
                    participants=[current.snapshot(), *current.room.visible_to(current)]
                )
            )
        )
        self._log.info(
            "participant.resumed", room=current.room.name, identity=current.identity, sid=sid
        )
        self.changed()
        return current

    def _refuse(self, link: SignalLink, sid: str, reason: Reason, action: int) -> None:
        self._log.info(
            "participant.resume_refused",
            sid=sid,
            reason=_reason_name(reason),
            action=signal.LeaveRequest.Action.Name(action),
        )
        link.send(
            signal.SignalResponse(
                leave=signal.LeaveRequest(
                    can_reconnect=action != _DISCONNECT,
                    reason=reason,  # type: ignore[arg-type]
                    action=action,  # type: ignore[arg-type]
                )
            )
        )
        link.close()

    def _new_peer(self, participant: Participant) -> Peer:
        peer = Peer(
            f"{participant.room.name}/{participant.identity}/{participant.sid}",
            on_connected=lambda: self.activate(participant),
            on_track=lambda track_id, track: self._track_arrived(participant, track_id, track),
            on_data=lambda label, payload: self._relay_data(participant, label, payload),
            forward_rtp=self.settings.forward_rtp,
        )
        self._peers.add(peer)
        return peer

    def _new_downlink(self, participant: Participant) -> Downlink:
        """Single PC: the participant's peer carries its subscriptions too.

        Two PCs: a second peer, the server side of the client's subscriber
        PeerConnection, which the server offers at once (its data channels
        carry the data packets the client receives).
        """
        label = f"{participant.room.name}/{participant.identity}/{participant.sid}"
        if participant.single_pc:
            assert participant.peer is not None
            peer = participant.peer
        else:
            peer = Peer(
                f"{label}/subscriber",
                on_connected=lambda: None,
                forward_rtp=self.settings.forward_rtp,
            )
            self._peers.add(peer)
        downlink = Downlink(
            peer,
            offers=not participant.single_pc,
            send=participant.send,
            spawn=self._spawn,
            label=label,
        )
        if not participant.single_pc:
            peer.open_data_channels()
        return downlink

    # ------------------------------------------------------------------ leaving

    def link_lost(self, participant: Participant, link: SignalLink) -> None:
        """``link`` closed. Without a leave first, wait ``leave_timeout`` for a resume."""
        if participant.removed or participant.link is not link:
            return
        participant.link = None
        self._log.info(
            "participant.signal_lost",
            room=participant.room.name,
            identity=participant.identity,
            sid=participant.sid,
            leave_timeout=self.settings.leave_timeout,
        )
        self._arm_timer(participant, self.settings.leave_timeout)
        self.changed()

    def drop_signal(self, participant: Participant, timeout: float) -> None:
        """Cut ``participant``'s connection as if its machine vanished: no leave, no resume."""
        participant.dropped = True
        self._dropped.add(participant.sid)
        link, participant.link = participant.link, None
        if link is not None:
            link.abort()
        for peer in _peers_of(participant):
            self._spawn(peer.close(), f"loopback-peer-close:{participant.sid}")
        self._arm_timer(participant, timeout)
        self._log.info(
            "participant.signal_dropped",
            room=participant.room.name,
            identity=participant.identity,
            sid=participant.sid,
            leave_timeout=timeout,
        )
        self.changed()

    def _arm_timer(self, participant: Participant, delay: float) -> None:
        self._cancel_timer(participant)
        participant.lost_timer = asyncio.get_running_loop().call_later(
            delay, self._lost_timeout, participant
        )

    def _cancel_timer(self, participant: Participant) -> None:
        timer, participant.lost_timer = participant.lost_timer, None
        if timer is not None:
            timer.cancel()

    def _lost_timeout(self, participant: Participant) -> None:
        participant.lost_timer = None
        self.remove(participant, self.settings.lost_signal_reason, tell_participant=False)

    def remove(self, participant: Participant, reason: Reason, *, tell_participant: bool) -> None:
        """Take ``participant`` out of its room and tell everyone else why.

        With ``tell_participant`` it first gets a ``leave`` (action DISCONNECT)
        carrying ``reason``, so its SDK disconnects instead of reconnecting.
        """
        if participant.removed:
            return
        participant.removed = True
        self._cancel_timer(participant)
        room = participant.room
        room.discard(participant)
        link, participant.link = participant.link, None
        if link is not None:
            if tell_participant:
                link.send(
                    signal.SignalResponse(
                        leave=signal.LeaveRequest(
                            can_reconnect=False,
                            reason=reason,  # type: ignore[arg-type]
                            action=_DISCONNECT,
                        )
                    )
                )
            link.close()
        room.broadcast(participant, disconnected_info(participant, reason))
        self._stop_media(participant)
        self._drop_data_subscriptions(room, [t.sid for t in participant.info.data_tracks])
        if (
            self.observer is not None
            and participant.info.kind == models.ParticipantInfo.AGENT
            # A full reconnect replaces the agent; its job goes on.
            and reason != _REASON.DUPLICATE_IDENTITY
        ):
            self.observer.participant_left(room.name, participant.identity)
        for peer in _peers_of(participant):
            self._spawn(self._close_peer(peer, link), f"loopback-peer-close:{participant.sid}")
        self._log.info(
            "participant.left",
            room=room.name,
            identity=participant.identity,
            sid=participant.sid,
            reason=_reason_name(reason),
        )
        self.changed()

    async def _close_peer(self, peer: Peer, link: SignalLink | None) -> None:
        # The leave goes out first, so the client closes its side on purpose
        # rather than seeing its PeerConnection fail under it.
        try:
            if link is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(link.wait_closed(), _FLUSH_TIMEOUT)
                # The leave is written, not yet read: closing at once made the
                # client's SDK log its data channels "closed unexpectedly" (at
                # error level) when it lost the race with the leave.
                await peer.wait_ended(_LEAVE_READ_TIMEOUT)
            await peer.close()
        finally:
            self._peers.discard(peer)

    def close_room(self, name: str, reason: Reason) -> None:
        """Remove everyone from room ``name`` (in join order) and forget the room.

        Raises:
            LookupError: when there is no such room.
        """
        room = self.rooms.pop(name, None)
        if room is None:
            raise LookupError(f"no room named {name!r} (rooms: {sorted(self.rooms)})")
        if self.observer is not None:
            # First: its jobs end because the room closed, not because their agents left.
            self.observer.room_closed(name)
        for participant in room:
            self.remove(participant, reason, tell_participant=True)
        self._log.info("room.closed", room=name, reason=_reason_name(reason))
        self.changed()

    async def shutdown(self, reason: Reason = _REASON.SERVER_SHUTDOWN) -> None:
        """Tell every participant the server is going away, then close every peer."""
        for name in list(self.rooms):
            self.close_room(name, reason)
        await asyncio.gather(*(peer.close() for peer in list(self._peers)))
        self._peers.clear()

    # ------------------------------------------------------------------ in the room

    def activate(self, participant: Participant) -> None:
        """The participant's PeerConnection connected: it is ACTIVE (everyone hears, itself too)."""
        if participant.removed or is_active(participant):
            return
        participant.info.state = models.ParticipantInfo.ACTIVE
        participant.changed()
        participant.room.broadcast(participant, include_self=True)
        self._log.info(
            "participant.active",
            room=participant.room.name,
            identity=participant.identity,
            sid=participant.sid,
        )
        self.changed()

    async def handle(self, participant: Participant, request: signal.SignalRequest) -> None:
        """Act on one message from the participant's client."""
        kind = request.WhichOneof("message")
        if participant.removed:
            return
        if kind == "ping_req":
            participant.send(
                signal.SignalResponse(
                    pong_resp=signal.Pong(
                        last_ping_timestamp=request.ping_req.timestamp,
                        timestamp=int(time.time() * 1000),
                    )
                )
            )
        elif kind == "ping":
            participant.send(signal.SignalResponse(pong=int(time.time() * 1000)))
        elif kind == "offer":
            await self.answer(participant, request.offer)
            self._sync_tracks(participant, request.offer.sdp)
        elif kind == "answer":
            # Two-PC clients answer the server's offers of their subscriber PC.
            if participant.downlink is not None and not participant.single_pc:
                await participant.downlink.accept(request.answer)
        elif kind == "trickle":
            if participant.single_pc or request.trickle.target == signal.PUBLISHER:
                assert participant.peer is not None
                await participant.peer.add_candidate(request.trickle)
            elif participant.downlink is not None:
                await participant.downlink.peer.add_candidate(request.trickle)
        elif kind == "add_track":
            self._add_track(participant, request.add_track)
        elif kind == "mute":
            self._mute(participant, request.mute)
        elif kind == "subscription":
            self._update_subscription(participant, request.subscription)
        elif kind == "track_setting":
            self._update_track_settings(participant, request.track_setting)
        elif kind == "publish_data_track_request":
            self._publish_data_track(participant, request.publish_data_track_request)
        elif kind == "unpublish_data_track_request":
            self._unpublish_data_track(participant, request.unpublish_data_track_request)
        elif kind == "update_data_subscription":
            self._update_data_subscription(participant, request.update_data_subscription)
        elif kind == "update_metadata":
            self._update_metadata(participant, request.update_metadata)
        elif kind == "leave":
            self.remove(participant, _REASON.CLIENT_INITIATED, tell_participant=False)
        elif kind == "simulate":
            self._simulate(participant, request.simulate)
        else:
            # sync_state, update_layers (the publisher's, deprecated)...
            self._log.debug("signal.ignored", identity=participant.identity, signal=kind)

    async def answer(self, participant: Participant, offer: signal.SessionDescription) -> None:
        """Answer a publisher offer from the client."""
        assert participant.peer is not None
        answer = await participant.peer.answer(offer)
        participant.send(signal.SignalResponse(answer=answer))
        if participant.single_pc:
            # The client's offer made the SCTP association the server's data
            # channels need (clients read data from those, not their own).
            participant.peer.open_data_channels()

    def _add_track(self, participant: Participant, request: signal.AddTrackRequest) -> None:
        if not participant.grant.can_publish:
            participant.send(
                signal.SignalResponse(
                    request_response=signal.RequestResponse(
                        reason=signal.RequestResponse.NOT_ALLOWED,
                        message="the token does not grant can_publish",
                        add_track=request,
                    )
                )
            )
            return
        track = requested(_sid("TR_"), request, forwarded=self.settings.forward_rtp)
        participant.send(
            signal.SignalResponse(
                track_published=signal.TrackPublishedResponse(cid=request.cid, track=track)
            )
        )
        # Like LiveKit, the room hears of the track only once it is
        # negotiated, i.e. when an offer carries it (see _sync_tracks).
        participant.pending_tracks[request.cid] = track

    def _mute(self, participant: Participant, request: signal.MuteTrackRequest) -> None:
        for track in participant.pending_tracks.values():
            if track.sid == request.sid:
                track.muted = request.muted
        for track in participant.info.tracks:
            if track.sid == request.sid:
                self._set_muted(participant, track, request.muted)

    def mute_track(self, participant: Participant, track_sid: str, muted: bool) -> models.TrackInfo:
        """The server mutes (or unmutes) a published track: its publisher is told, the room hears.

        Raises:
            LookupError: when ``participant`` publishes no such track.
        """
        track = next((t for t in participant.info.tracks if t.sid == track_sid), None)
        if track is None:
            raise LookupError(f"{participant.identity!r} publishes no track {track_sid!r}")
        participant.send(
            signal.SignalResponse(mute=signal.MuteTrackRequest(sid=track_sid, muted=muted))
        )
        self._set_muted(participant, track, muted)
        copy = models.TrackInfo()
        copy.CopyFrom(track)
        return copy

    def _set_muted(self, participant: Participant, track: models.TrackInfo, muted: bool) -> None:
        if track.muted == muted:
            return
        track.muted = muted
        participant.changed()
        participant.room.broadcast(participant)
        self.changed()

    def _sync_tracks(self, participant: Participant, sdp: str) -> None:
        """Publish pending tracks the client's offer now sends; drop those it stopped sending."""
        sending = sending_tracks(sdp)
        gone = [t for t in participant.info.tracks if participant.track_cids[t.sid] not in sending]
        added = _match_pending(participant, sending)
        if not added and not gone:
            return
        for track in gone:
            participant.info.tracks.remove(track)
            self._unpublish_media(participant, track.sid)
            del participant.track_cids[track.sid]
            self._log.info(
                "track.unpublished",
                room=participant.room.name,
                identity=participant.identity,
                track=track.sid,
            )
        published: list[str] = []
        mids = {track_id: mid for mid, track_id in msid_track_ids(sdp).items()}
        codecs = {} if participant.peer is None else sdp_codecs(participant.peer.local_sdp)
        for cid, track_id in added:
            track = participant.pending_tracks.pop(cid)
            mid = mids.get(track_id, "")
            negotiated(track, mid=mid, mime_type=codecs.get(mid, ""))
            feed = participant.feeds.get(track_id)
            if feed is not None and feed.relay is not None:
                feed.relay.set_layers(
                    [Layer(x.rid, int(x.quality), x.width, x.height) for x in track.layers]
                )
            participant.info.tracks.append(track)
            published.append(track.sid)
            participant.track_cids[track.sid] = track_id
            self._log.info(
                "track.published",
                room=participant.room.name,
                identity=participant.identity,
                track=track.sid,
                kind=models.TrackType.Name(track.type),
            )
        participant.changed()
        participant.room.broadcast(participant)
        # After the broadcast: a client must know of a track before its media comes.
        for track_sid in published:
            self._forward_to_room(participant, track_sid)
        self.changed()

    # ------------------------------------------------------------------ media

    def _track_arrived(
        self, participant: Participant, track_id: str, track: MediaStreamTrack
    ) -> None:
        """The client sends media for ``track_id`` (its a=msid track id): read it from now on."""
        old = participant.feeds.pop(track_id, None)
        if old is not None:
            old.close()
        label = f"{participant.room.name}/{participant.identity}/{track_id}"
        receiver = None if participant.peer is None else participant.peer.receiver_of(track)
        relay = None
        if self.settings.forward_rtp and receiver is not None:
            relay = RtpRelay(receiver, track.kind, label)
        participant.feeds[track_id] = TrackFeed(track, label, self._spawn, relay)

    def _feed(self, publisher: Participant, track_sid: str) -> TrackFeed | None:
        track_id = publisher.track_cids.get(track_sid)
        return None if track_id is None else publisher.feeds.get(track_id)

    def _wants(self, subscriber: Participant, track_sid: str) -> bool:
        if subscriber.removed or subscriber.downlink is None or not subscriber.grant.can_subscribe:
            return False
        if track_sid in subscriber.opted_out:
            return False
        return track_sid in subscriber.opted_in or subscriber.auto_subscribe

    def _subscribe_to_room(self, subscriber: Participant) -> None:
        """A newcomer gets every published track it wants."""
        for publisher in subscriber.room:
            if publisher is not subscriber:
                for track in publisher.info.tracks:
                    if self._wants(subscriber, track.sid):
                        self._forward(publisher, track.sid, subscriber)

    def _forward_to_room(self, publisher: Participant, track_sid: str) -> None:
        """A track was just published: everyone else who wants it gets it."""
        for subscriber in publisher.room:
            if subscriber is not publisher and self._wants(subscriber, track_sid):
                self._forward(publisher, track_sid, subscriber)

    def _forward(self, publisher: Participant, track_sid: str, subscriber: Participant) -> None:
        if publisher.hidden:
            return  # nobody knows of it, so nobody could tell whose track this is
        feed = self._feed(publisher, track_sid)
        downlink = subscriber.downlink
        if feed is None or downlink is None or downlink.has(track_sid):
            if feed is None:
                self._log.warning("track.no_media", identity=publisher.identity, track=track_sid)
            return
        first = feed.subscribers == 0
        choice = subscriber.track_settings.get(track_sid)
        downlink.add(publisher.sid, feed.subscribe(subscriber.sid, track_sid, choice))
        if first:
            # The publisher's SDK reports its track subscribed (local_track_subscribed).
            publisher.send(
                signal.SignalResponse(track_subscribed=signal.TrackSubscribed(track_sid=track_sid))
            )
        self._log.info(
            "track.subscribed",
            room=publisher.room.name,
            identity=subscriber.identity,
            publisher=publisher.identity,
            track=track_sid,
        )

    def _unforward(self, publisher: Participant, track_sid: str, subscriber: Participant) -> None:
        if subscriber.downlink is None or not subscriber.downlink.has(track_sid):
            return
        subscriber.downlink.remove(track_sid)
        feed = self._feed(publisher, track_sid)
        if feed is not None:
            feed.unsubscribe(subscriber.sid)
        self._log.info(
            "track.unsubscribed",
            room=publisher.room.name,
            identity=subscriber.identity,
            publisher=publisher.identity,
            track=track_sid,
        )

    def _unpublish_media(self, publisher: Participant, track_sid: str) -> None:
        """``track_sid`` is gone: nobody receives it any more, and nobody reads it."""
        for subscriber in publisher.room:
            self._unforward(publisher, track_sid, subscriber)
        track_id = publisher.track_cids.get(track_sid)
        feed = None if track_id is None else publisher.feeds.pop(track_id, None)
        if feed is not None:
            feed.close()

    def _stop_media(self, participant: Participant) -> None:
        """``participant`` left: its tracks stop reaching the room, and it receives nothing."""
        for track in participant.info.tracks:
            for subscriber in participant.room:
                self._unforward(participant, track.sid, subscriber)
        feeds, participant.feeds = participant.feeds, {}
        for feed in feeds.values():
            feed.close()
        if participant.downlink is not None:
            for track_sid in participant.downlink.track_sids:
                publisher = _publisher_of(participant.room, track_sid, participant)
                if publisher is not None:
                    self._unforward(publisher, track_sid, participant)
            participant.downlink.close()

    def _update_subscription(
        self, subscriber: Participant, request: signal.UpdateSubscription
    ) -> None:
        """``set_subscribed(True/False)`` on the client: forward or stop forwarding those tracks."""
        sids = set(request.track_sids)
        for entry in request.participant_tracks:
            sids.update(entry.track_sids)
        for track_sid in sids:
            if request.subscribe:
                subscriber.opted_out.discard(track_sid)
                subscriber.opted_in.add(track_sid)
            else:
                subscriber.opted_in.discard(track_sid)
                subscriber.opted_out.add(track_sid)
            publisher = _publisher_of(subscriber.room, track_sid, subscriber)
            if publisher is None:
                self._log.info(
                    "track.subscription_unknown", identity=subscriber.identity, track=track_sid
                )
            elif request.subscribe and self._wants(subscriber, track_sid):
                self._forward(publisher, track_sid, subscriber)
            elif not request.subscribe:
                self._unforward(publisher, track_sid, subscriber)
        self.changed()

    def _update_track_settings(
        self, subscriber: Participant, request: signal.UpdateTrackSettings
    ) -> None:
        """The subscriber says what it displays: which layer it gets, or nothing (``disabled``)."""
        choice = LayerChoice(
            quality=int(request.quality),
            width=request.width,
            height=request.height,
            disabled=request.disabled,
        )
        for track_sid in request.track_sids:
            subscriber.track_settings[track_sid] = choice
            publisher = _publisher_of(subscriber.room, track_sid, subscriber)
            feed = None if publisher is None else self._feed(publisher, track_sid)
            if feed is not None and feed.relay is not None:
                feed.relay.select(subscriber.sid, choice)
        self._log.debug(
            "track.settings",
            identity=subscriber.identity,
            tracks=list(request.track_sids),
            quality=models.VideoQuality.Name(request.quality),
            width=request.width,
            height=request.height,
            disabled=request.disabled,
        )

    # ------------------------------------------------------------------ data tracks

    def _publish_data_track(
        self, participant: Participant, request: signal.PublishDataTrackRequest
    ) -> None:
        tracks = participant.info.data_tracks
        answer: models.DataTrackInfo | signal.RequestResponse
        if not participant.grant.can_publish_data:
            reason = signal.RequestResponse.NOT_ALLOWED
            answer = data_tracks.refusal(request, reason, "the token does not grant data")
        else:
            answer = data_tracks.publish(tracks, request)
        if isinstance(answer, signal.RequestResponse):
            self._log.info(
                "data_track.refused",
                identity=participant.identity,
                name=request.name,
                reason=signal.RequestResponse.Reason.Name(answer.reason),
            )
            participant.send(signal.SignalResponse(request_response=answer))
            return
        tracks.append(answer)
        participant.send(
            signal.SignalResponse(
                publish_data_track_response=signal.PublishDataTrackResponse(info=answer)
            )
        )
        participant.changed()
        participant.room.broadcast(participant)
        self._log.info(
            "data_track.published",
            room=participant.room.name,
            identity=participant.identity,
            track=answer.sid,
            name=answer.name,
        )
        self.changed()

    def _unpublish_data_track(
        self, participant: Participant, request: signal.UnpublishDataTrackRequest
    ) -> None:
        track = data_tracks.unpublish(participant.info.data_tracks, request)
        if track is None:
            return
        participant.send(
            signal.SignalResponse(
                unpublish_data_track_response=signal.UnpublishDataTrackResponse(info=track)
            )
        )
        self._drop_data_subscriptions(participant.room, [track.sid])
        participant.changed()
        participant.room.broadcast(participant)
        self._log.info(
            "data_track.unpublished",
            room=participant.room.name,
            identity=participant.identity,
            track=track.sid,
        )
        self.changed()

    def _drop_data_subscriptions(self, room: Room, track_sids: list[str]) -> None:
        for member in room:
            if any([member.data_subscriptions.remove(sid) for sid in track_sids]):
                member.send(member.data_subscriptions.message())

    def _update_data_subscription(
        self, subscriber: Participant, request: signal.UpdateDataSubscription
    ) -> None:
        for update in request.updates:
            publisher = next(
                (
                    p
                    for p in subscriber.room
                    if p is not subscriber
                    and any(t.sid == update.track_sid for t in p.info.data_tracks)
                ),
                None,
            )
            if not update.subscribe:
                subscriber.data_subscriptions.remove(update.track_sid)
            elif publisher is None or not subscriber.grant.can_subscribe:
                self._log.info(
                    "data_track.subscription_refused",
                    identity=subscriber.identity,
                    track=update.track_sid,
                )
            else:
                subscriber.data_subscriptions.add(
                    publisher.identity, publisher.sid, update.track_sid
                )
        subscriber.send(subscriber.data_subscriptions.message())
        self.changed()

    def _forward_data_track(self, publisher: Participant, packet: bytes) -> None:
        """A data track packet: a copy to each subscriber, under its handle."""
        handle = data_tracks.publisher_handle(packet)
        track = next((t for t in publisher.info.data_tracks if t.pub_handle == handle), None)
        if track is None:
            self._log.debug("data_track.unknown_handle", identity=publisher.identity, handle=handle)
            return
        for member in publisher.room:
            theirs = member.data_subscriptions.handle_of(track.sid)
            if member is publisher or theirs is None or member.downlink is None:
                continue
            member.downlink.peer.send_data(DATA_TRACK, data_tracks.rewritten(packet, theirs))

    # ------------------------------------------------------------------ data packets

    def _relay_data(self, sender: Participant, label: str, payload: bytes) -> None:
        """A data packet from ``sender``: to everyone else, or to the identities it names."""
        if sender.removed:
            return
        if label == DATA_TRACK:
            self._forward_data_track(sender, payload)
            return
        if not sender.grant.can_publish_data:
            self._log.info("data.not_allowed", identity=sender.identity)
            return
        try:
            packet = models.DataPacket.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            self._log.warning("data.undecodable", identity=sender.identity, error=str(exc))
            return
        # The server, not the sender, says who sent it.
        packet.participant_sid = sender.sid
        packet.participant_identity = sender.identity
        if packet.HasField("user"):
            packet.user.participant_sid = sender.sid
            packet.user.participant_identity = sender.identity
        self.deliver_data(sender.room, packet, label, sender=sender)

    def deliver_data(
        self, room: Room, packet: models.DataPacket, label: str, *, sender: Participant | None
    ) -> None:
        """``packet`` to everyone in ``room`` but its sender, or to the identities it names."""
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            destinations.update(packet.user.destination_identities)
        data = packet.SerializeToString()
        for member in room:
            if member is sender or member.downlink is None:
                continue
            if destinations and member.identity not in destinations:
                continue
            if not member.downlink.peer.send_data(label, data):
                self._log.debug("data.not_delivered", identity=member.identity, label=label)

    def update_participant(
        self,
        participant: Participant,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        permission: models.ParticipantPermission | None = None,
    ) -> None:
        """Change what is set (an empty attribute value deletes it); everyone hears, itself too."""
        info = participant.info
        if name:
            info.name = name
        if metadata:
            info.metadata = metadata
        for key, value in (attributes or {}).items():
            if value:
                info.attributes[key] = value
            else:
                info.attributes.pop(key, None)
        if permission is not None:
            info.permission.CopyFrom(permission)
            participant.grant = dataclasses.replace(
                participant.grant,
                can_publish=permission.can_publish,
                can_subscribe=permission.can_subscribe,
                can_publish_data=permission.can_publish_data,
                can_update_metadata=permission.can_update_metadata,
            )
        participant.changed()
        participant.room.broadcast(participant, include_self=True)
        self.changed()

    def _update_metadata(
        self, participant: Participant, request: signal.UpdateParticipantMetadata
    ) -> None:
        if not participant.grant.can_update_metadata:
            reason = signal.RequestResponse.NOT_ALLOWED
            message = "the token does not grant can_update_own_metadata"
        else:
            self.update_participant(
                participant,
                name=request.name,
                metadata=request.metadata,
                attributes=request.attributes,
            )
            reason, message = signal.RequestResponse.OK, ""
        participant.send(
            signal.SignalResponse(
                request_response=signal.RequestResponse(
                    request_id=request.request_id,
                    reason=reason,
                    message=message,
                    update_metadata=request,
                )
            )
        )

    def _simulate(self, participant: Participant, scenario: signal.SimulateScenario) -> None:
        which = scenario.WhichOneof("scenario")
        if which == "leave_request_full_reconnect":
            participant.send(
                signal.SignalResponse(
                    leave=signal.LeaveRequest(
                        can_reconnect=True,
                        reason=_REASON.CLIENT_INITIATED,
                        action=_RECONNECT,
                    )
                )
            )
        elif which == "server_leave":
            self.remove(participant, _REASON.SERVER_SHUTDOWN, tell_participant=True)
        else:
            self._log.warning(
                "signal.simulate_unsupported", identity=participant.identity, scenario=which
            )


def _publisher_of(room: Room, track_sid: str, viewer: Participant) -> Participant | None:
    """Who in ``room`` (``viewer`` aside) publishes ``track_sid``, if anyone."""
    return next((p for p in room if p is not viewer and track_sid in p.track_cids), None)


def _peers_of(participant: Participant) -> list[Peer]:
    """Every peer of ``participant``: its own, and its subscriber peer with two PCs."""
    peers = [] if participant.peer is None else [participant.peer]
    if participant.downlink is not None and participant.downlink.peer not in peers:
        peers.append(participant.downlink.peer)
    return peers


def _match_pending(participant: Participant, sending: dict[str, str]) -> list[tuple[str, str]]:
    """``(cid, track id)`` of the pending tracks that ``sending`` (track id -> kind) carries.

    The track id in the SDP is the AddTrackRequest's cid, except when a
    track is published again: the new sender gets a fresh id. Those are
    matched by media kind, in order.
    """
    known = set(participant.track_cids.values())
    unclaimed = [
        tid for tid in sending if tid not in known and tid not in participant.pending_tracks
    ]
    matched: list[tuple[str, str]] = []
    for cid, track in participant.pending_tracks.items():
        if cid in sending:
            matched.append((cid, cid))
            continue
        kind = "audio" if track.type == models.AUDIO else "video"
        for track_id in unclaimed:
            if sending[track_id] == kind:
                unclaimed.remove(track_id)
                matched.append((cid, track_id))
                break
    return matched
