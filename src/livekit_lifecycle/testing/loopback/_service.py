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
  and tell the room the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from livekit.protocol import models
from livekit.protocol import rtc as signal

from livekit_lifecycle.log import get_logger

from ._peer import Peer, sending_tracks
from ._room import (
    Participant,
    Room,
    SignalLink,
    disconnected_info,
    is_active,
    new_participant_info,
)
from ._signal import JoinParams
from ._tokens import JoinGrant

__all__ = ["RoomService", "ServiceSettings"]

Reason = int
_REASON = models.DisconnectReason
_DISCONNECT = signal.LeaveRequest.DISCONNECT
_RECONNECT = signal.LeaveRequest.RECONNECT
_SERVER_VERSION = "1.9.0"
_PROTOCOL = 16
_FLUSH_TIMEOUT = 2.0
Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    leave_timeout: float
    lost_signal_reason: Reason
    ping_interval: int
    ping_timeout: int


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


def _reason_name(reason: Reason) -> str:
    try:
        return _REASON.Name(reason)
    except ValueError:
        return str(reason)


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
        self._log = get_logger("livekit_lifecycle.loopback")

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

    def _changed(self) -> None:
        for future in list(self._waiters):
            if not future.done():
                future.set_result(None)

    # ------------------------------------------------------------------ joining

    def join(self, grant: JoinGrant, params: JoinParams, link: SignalLink) -> Participant:
        """A new connection: replace any participant with that identity, announce the new one."""
        room = self.rooms.get(grant.room)
        if room is None:
            room = self.rooms[grant.room] = Room(grant.room, _sid("RM_"))
            self._log.info("room.created", room=room.name, room_sid=room.sid)
        old = room.participants.get(grant.identity)
        if old is not None:
            self.remove(old, _REASON.DUPLICATE_IDENTITY, tell_participant=True)
        info = new_participant_info(grant, _sid("PA_"), params.client_protocol)
        participant = Participant(
            room=room, info=info, grant=grant, single_pc=params.single_pc, link=link
        )
        participant.peer = self._new_peer(participant)
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
                    # The client offers, the server answers: no server-side offer is needed.
                    subscriber_primary=False,
                    # 0 would panic the SDK's interval timer.
                    ping_interval=self.settings.ping_interval,
                    ping_timeout=self.settings.ping_timeout,
                )
            )
        )
        room.broadcast(participant)
        self._log.info(
            "participant.joined",
            room=room.name,
            identity=participant.identity,
            sid=participant.sid,
            protocol="v1" if params.single_pc else "v0",
            hidden=participant.hidden or None,
        )
        self._changed()
        return participant

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
        self._changed()
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
        )
        self._peers.add(peer)
        return peer

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
        self._changed()

    def drop_signal(self, participant: Participant, timeout: float) -> None:
        """Cut ``participant``'s connection as if its machine vanished: no leave, no resume."""
        participant.dropped = True
        self._dropped.add(participant.sid)
        link, participant.link = participant.link, None
        if link is not None:
            link.abort()
        if participant.peer is not None:
            self._spawn(participant.peer.close(), f"loopback-peer-close:{participant.sid}")
        self._arm_timer(participant, timeout)
        self._log.info(
            "participant.signal_dropped",
            room=participant.room.name,
            identity=participant.identity,
            sid=participant.sid,
            leave_timeout=timeout,
        )
        self._changed()

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
        if participant.peer is not None:
            self._spawn(
                self._close_peer(participant.peer, link), f"loopback-peer-close:{participant.sid}"
            )
        self._log.info(
            "participant.left",
            room=room.name,
            identity=participant.identity,
            sid=participant.sid,
            reason=_reason_name(reason),
        )
        self._changed()

    async def _close_peer(self, peer: Peer, link: SignalLink | None) -> None:
        # The leave goes out first, so the client closes its side on purpose
        # rather than seeing its PeerConnection fail under it.
        try:
            if link is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(link.wait_closed(), _FLUSH_TIMEOUT)
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
        for participant in room:
            self.remove(participant, reason, tell_participant=True)
        self._log.info("room.closed", room=name, reason=_reason_name(reason))
        self._changed()

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
        self._changed()

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
        elif kind == "trickle":
            # Two-PC clients also trickle for their subscriber PeerConnection,
            # which this server never offers: those candidates have no use.
            if participant.single_pc or request.trickle.target == signal.PUBLISHER:
                assert participant.peer is not None
                await participant.peer.add_candidate(request.trickle)
        elif kind == "add_track":
            self._add_track(participant, request.add_track)
        elif kind == "mute":
            self._mute(participant, request.mute)
        elif kind == "update_metadata":
            self._update_metadata(participant, request.update_metadata)
        elif kind == "leave":
            self.remove(participant, _REASON.CLIENT_INITIATED, tell_participant=False)
        elif kind == "simulate":
            self._simulate(participant, request.simulate)
        else:
            # subscription, track_setting, sync_state, update_layers...: no
            # media flows through this server, so there is nothing to change.
            self._log.debug("signal.ignored", identity=participant.identity, signal=kind)

    async def answer(self, participant: Participant, offer: signal.SessionDescription) -> None:
        """Answer a publisher offer from the client."""
        assert participant.peer is not None
        answer = await participant.peer.answer(offer)
        participant.send(signal.SignalResponse(answer=answer))

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
        track = models.TrackInfo(
            sid=_sid("TR_"),
            type=request.type,
            name=request.name,
            muted=request.muted,
            width=request.width,
            height=request.height,
            simulcast=len(request.layers) > 1,
            disable_dtx=request.disable_dtx,
            source=request.source,
            layers=list(request.layers),
            mime_type="audio/opus" if request.type == models.AUDIO else "video/vp8",
            stream=request.stream,
            encryption=request.encryption,
        )
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
            if track.sid == request.sid and track.muted != request.muted:
                track.muted = request.muted
                participant.changed()
                participant.room.broadcast(participant)
                self._changed()

    def _sync_tracks(self, participant: Participant, sdp: str) -> None:
        """Publish pending tracks the client's offer now sends; drop those it stopped sending."""
        sending = sending_tracks(sdp)
        gone = [t for t in participant.info.tracks if participant.track_cids[t.sid] not in sending]
        added = _match_pending(participant, sending)
        if not added and not gone:
            return
        for track in gone:
            participant.info.tracks.remove(track)
            del participant.track_cids[track.sid]
            self._log.info(
                "track.unpublished",
                room=participant.room.name,
                identity=participant.identity,
                track=track.sid,
            )
        for cid, track_id in added:
            track = participant.pending_tracks.pop(cid)
            participant.info.tracks.append(track)
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
        self._changed()

    def _update_metadata(
        self, participant: Participant, request: signal.UpdateParticipantMetadata
    ) -> None:
        if not participant.grant.can_update_metadata:
            reason = signal.RequestResponse.NOT_ALLOWED
            message = "the token does not grant can_update_own_metadata"
        else:
            info = participant.info
            if request.name:
                info.name = request.name
            if request.metadata:
                info.metadata = request.metadata
            for key, value in request.attributes.items():
                if value:
                    info.attributes[key] = value
                else:
                    info.attributes.pop(key, None)
            participant.changed()
            participant.room.broadcast(participant, include_self=True)
            self._changed()
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
