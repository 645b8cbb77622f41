"""The server side of a client's PeerConnection, played by aiortc.

The SDK's ``Room.connect`` waits until its PeerConnection is ``connected``
(ICE and DTLS done), so the server needs a real WebRTC peer. aiortc answers
the client's publisher offers (and, for two-PeerConnection clients, offers
their subscriber PeerConnection). Incoming tracks and data packets are handed
to the room service; outgoing tracks are placed by the participant's
:class:`~._downlink.Downlink`. aiortc gathers every host candidate while it
builds a description, so descriptions carry them and the server never trickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Mapping

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import rtc as signal

from ._codecs import accept_forwarded_codecs, as_offered, decodable_only
from ._data_tracks import DATA_TRACK
from ._log import describe, get_logger
from ._media import ForwardedTrack
from ._simulcast import answer_sdp, extension_ids, route_by_mid

__all__ = ["Peer", "msid_track_ids", "sending_tracks"]

_CONNECT_STATES = ("connected",)
_LOST_STATES = ("failed", "closed")
# The data channel labels LiveKit's SDKs use for reliable and lossy data packets.
RELIABLE = "_reliable"
LOSSY = "_lossy"

_AIORTC_CONNECT = "_RTCPeerConnection__connect"
"""aiortc's pass that starts ICE, DTLS, SCTP and the senders and receivers (name-mangled)."""

_UNSENT_LIMIT = 1000
"""Reliable packets kept for a data channel that is not open yet."""

OnTrack = Callable[[str, MediaStreamTrack], None]
OnData = Callable[[str, bytes], None]
Arrange = Callable[[list[RTCRtpTransceiver]], Mapping[str, str]]


class Peer:
    """One aiortc ``RTCPeerConnection`` facing one client PeerConnection.

    Descriptions and candidates are applied strictly in arrival order
    (candidates that come before the first remote description wait for it).
    ``on_connected`` fires the first time ICE and DTLS complete; ``on_track``
    gets each incoming track with the track id its ``a=msid`` line names;
    ``on_data`` gets each message on a data channel the client opened.
    ``arrange``, when set, runs between applying an offer and answering it:
    it may put tracks on the transceivers and returns mid -> track sid.
    With ``forward_rtp`` (nothing it receives is decoded) it negotiates VP9
    and AV1 too (see :mod:`._codecs`) and its answers accept the layers a
    video section offers (see :mod:`._simulcast`); without, it keeps to the
    codecs aiortc decodes and the publisher sends one layer.
    """

    def __init__(
        self,
        label: str,
        on_connected: Callable[[], None],
        *,
        on_track: OnTrack | None = None,
        on_data: OnData | None = None,
        forward_rtp: bool = False,
    ) -> None:
        self._label = label
        self._forward_rtp = forward_rtp
        if forward_rtp:
            accept_forwarded_codecs()
        self._on_connected = on_connected
        self._on_track = on_track
        self._on_data = on_data
        self.arrange: Arrange | None = None
        self._outbound: dict[str, RTCDataChannel] = {}
        self._unsent: list[bytes] = []
        self._remote_sdp = ""
        # LiveKit's SDKs bundle every section on one transport. With aiortc's
        # default (balanced) policy, the second and later video sections of
        # one offer took the first one's transport before BUNDLE moved that
        # one, and kept a transport that never connects: nothing was sent on them.
        configuration = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self._pc = RTCPeerConnection(configuration)
        self._lock = asyncio.Lock()
        self._described = False
        self._early: list[signal.TrickleRequest] = []
        self._connected_once = False
        self._closed = False
        self._ended = asyncio.Event()
        self._starting: set[asyncio.Task[None]] = set()
        self._log = get_logger().bind(peer=label)
        self._pc.on("connectionstatechange", self._state_changed)
        self._pc.on("track", self._track)
        self._pc.on("datachannel", self._datachannel)

    @property
    def state(self) -> str:
        """aiortc's ``connectionState``: new, connecting, connected, failed or closed."""
        return str(self._pc.connectionState)

    @property
    def local_sdp(self) -> str:
        """The last description this side applied (its answer or offer); empty before one."""
        local = self._pc.localDescription
        return "" if local is None else str(local.sdp)

    def _state_changed(self) -> None:
        state = self._pc.connectionState
        self._log.debug("peer.state", state=state)
        if state in ("closed", "failed"):
            self._ended.set()
        if state == "connected" and not self._closed:
            self._start_media()
        if state in _CONNECT_STATES and not self._connected_once:
            self._connected_once = True
            try:
                self._on_connected()
            except Exception:
                self._log.exception("peer.callback_failed", callback=describe(self._on_connected))

    def _start_media(self) -> None:
        """Start the senders and receivers aiortc skipped while DTLS was connecting.

        After each description aiortc starts the senders and receivers of
        the sections that carry media, but only if DTLS is connected by
        then; the one pass that waits for DTLS to connect started only what
        was there when it began. So a track negotiated while the connection
        was still connecting (a two-PC client's subscriber PeerConnection,
        which its ``connect`` does not wait for) was never sent: the
        subscriber heard silence. aiortc's own pass, run again now, starts
        what it skipped (it starts nothing twice).
        """
        connect = getattr(self._pc, _AIORTC_CONNECT)
        task = asyncio.ensure_future(connect())
        self._starting.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.warning("peer.media_start_failed", error=repr(task.exception()))

    def _track(self, track: MediaStreamTrack) -> None:
        if self._on_track is None:
            return
        # aiortc names the track after a=msid only when a=msid-semantic lists
        # its stream, which libwebrtc no longer does: read a=msid by mid.
        # (aiortc's own remoteDescription drops a=msid: keep the client's text.)
        mid = next((t.mid for t in self._pc.getTransceivers() if t.receiver.track is track), None)
        track_id = None if mid is None else msid_track_ids(self._remote_sdp).get(mid)
        try:
            self._on_track(track_id or track.id, track)
        except Exception:
            self._log.exception("peer.callback_failed", callback=describe(self._on_track))

    def receiver_of(self, track: MediaStreamTrack) -> RTCRtpReceiver | None:
        """The receiver an incoming ``track`` arrives on."""
        return next(
            (t.receiver for t in self._pc.getTransceivers() if t.receiver.track is track), None
        )

    def _datachannel(self, channel: RTCDataChannel) -> None:
        on_data = self._on_data
        if on_data is None:
            return
        label = channel.label

        def received(message: bytes | str) -> None:
            if isinstance(message, str):
                return  # the SDKs send binary DataPackets only
            try:
                on_data(label, message)
            except Exception:
                self._log.exception("peer.callback_failed", callback=describe(on_data))

        channel.on("message", received)

    # ------------------------------------------------------------------ descriptions

    async def answer(self, offer: signal.SessionDescription) -> signal.SessionDescription:
        """Apply the client's offer and return the answer to send back (same ``id``)."""
        async with self._lock:
            if self._closed:
                raise ConnectionError(f"peer {self._label} is closed")
            self._remote_sdp = offer.sdp
            await self._pc.setRemoteDescription(
                RTCSessionDescription(sdp=offer.sdp, type=offer.type or "offer")
            )
            await self._flush_early()
            for transceiver in self._pc.getTransceivers():
                if transceiver.mid is not None:
                    extensions = extension_ids(offer.sdp, transceiver.mid)
                    route_by_mid(transceiver.receiver.transport, extensions)
                if self._forward_rtp:
                    as_offered(transceiver, offer.sdp)
                else:
                    decodable_only(transceiver)
            mids: Mapping[str, str] = {}
            if self.arrange is not None:
                mids = self.arrange(self._pc.getTransceivers())
            answer = await self._pc.createAnswer()
            await self._pc.setLocalDescription(answer)
            local = self._pc.localDescription
            return signal.SessionDescription(
                type="answer",
                sdp=answer_sdp(offer.sdp, local.sdp, simulcast=self._forward_rtp),
                id=offer.id,
                mid_to_track_id=dict(mids),
            )

    async def offer(self, offer_id: int, mids: Mapping[str, str]) -> signal.SessionDescription:
        """Create and apply an offer of this side's tracks and data channels."""
        async with self._lock:
            if self._closed:
                raise ConnectionError(f"peer {self._label} is closed")
            offer = await self._pc.createOffer()
            await self._pc.setLocalDescription(offer)
            local = self._pc.localDescription
            return signal.SessionDescription(
                type="offer", sdp=local.sdp, id=offer_id, mid_to_track_id=dict(mids)
            )

    async def accept(self, answer: signal.SessionDescription) -> None:
        """Apply the client's answer to this side's last offer."""
        async with self._lock:
            if self._closed:
                return
            await self._pc.setRemoteDescription(
                RTCSessionDescription(sdp=answer.sdp, type=answer.type or "answer")
            )
            await self._flush_early()

    async def _flush_early(self) -> None:
        if not self._described:
            self._described = True
            early, self._early = self._early, []
            for trickle in early:
                await self._add(trickle)

    # ------------------------------------------------------------------ media and data out

    def add_sender(self, track: MediaStreamTrack, stream_id: str) -> RTCRtpTransceiver:
        """A new sendonly transceiver for ``track`` (goes out with the next offer)."""
        transceiver = self._pc.addTransceiver(track, direction="sendonly")
        if not self._forward_rtp:
            decodable_only(transceiver)
        _name_stream(transceiver.sender, stream_id)
        _placed(track, transceiver)
        return transceiver

    @staticmethod
    def send_on(transceiver: RTCRtpTransceiver, track: MediaStreamTrack, stream_id: str) -> None:
        """Send ``track`` on ``transceiver`` from the next answer on."""
        transceiver.sender.replaceTrack(track)
        _name_stream(transceiver.sender, stream_id)
        _placed(track, transceiver)
        transceiver.direction = "sendonly"

    @staticmethod
    def retire(transceiver: RTCRtpTransceiver) -> None:
        """Stop using ``transceiver``: inactive from the next description on, under a new name.

        The new name matters: the client's SDK rejects (the Rust one panics
        on) a description in which two sections carry the same ``a=msid``,
        and the track may come back on another section.
        """
        transceiver.direction = "inactive"
        _name_stream(transceiver.sender, f"retired-{uuid.uuid4()}", str(uuid.uuid4()))

    def open_data_channels(self) -> None:
        """Open the server's reliable, lossy and data track channels (idempotent).

        Clients read data packets from the channels the server opens, not
        from their own.
        """
        if self._closed or self._outbound:
            return
        reliable = self._pc.createDataChannel(RELIABLE, ordered=True)
        reliable.on("open", self._flush_reliable)
        self._outbound[RELIABLE] = reliable
        for label in (LOSSY, DATA_TRACK):
            self._outbound[label] = self._pc.createDataChannel(
                label, ordered=False, maxRetransmits=0
            )

    def send_data(self, label: str, payload: bytes) -> bool:
        """Send ``payload`` on the server's channel ``label``.

        Reliable packets sent before the channel is open wait for it (the
        client may count as connected before its subscriber PeerConnection
        is); lossy ones are dropped then. ``False`` when ``payload`` was dropped.
        """
        channel = self._outbound.get(label)
        if channel is None or channel.readyState in ("closing", "closed"):
            return False
        if channel.readyState == "open":
            channel.send(payload)
            return True
        if label != RELIABLE or len(self._unsent) >= _UNSENT_LIMIT:
            return False
        self._unsent.append(payload)
        return True

    def _flush_reliable(self) -> None:
        channel = self._outbound[RELIABLE]
        unsent, self._unsent = self._unsent, []
        for payload in unsent:
            channel.send(payload)

    async def add_candidate(self, trickle: signal.TrickleRequest) -> None:
        """Add one trickled candidate (held until the first offer has been applied)."""
        async with self._lock:
            if self._closed:
                return
            if not self._described:
                self._early.append(trickle)
                return
            await self._add(trickle)

    async def _add(self, trickle: signal.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit)
        except ValueError:
            self._log.warning("peer.bad_candidate", candidate=trickle.candidateInit[:200])
            return
        line = str(init.get("candidate", ""))
        if not line:
            return  # end of candidates
        candidate = candidate_from_sdp(line.removeprefix("candidate:"))
        if candidate.protocol.lower() != "udp":
            return  # aioice connects over UDP only
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        try:
            await self._pc.addIceCandidate(candidate)
        except Exception as exc:
            # A candidate for an address family aioice has no socket for, say:
            # one bad candidate must not end the connection.
            self._log.debug("peer.candidate_rejected", error=f"{type(exc).__name__}: {exc}")

    async def wait_ended(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the connection to close or fail (the client closed it)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout)

    async def close(self) -> None:
        """Close the PeerConnection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        # Shielded: aiortc may be closing the connection itself already (the
        # client closed DTLS), and cancelling a wait on that close would
        # cancel aiortc's own completion future under it.
        await asyncio.shield(self._pc.close())


def _placed(track: MediaStreamTrack, transceiver: RTCRtpTransceiver) -> None:
    # An RTP relay writes a forwarded track's packets to its sender itself.
    if isinstance(track, ForwardedTrack):
        track.transceiver = transceiver


def _name_stream(sender: RTCRtpSender, stream_id: str, track_id: str | None = None) -> None:
    # aiortc has no API for the a=msid line, and LiveKit's SDKs read the
    # publisher's participant sid and the track sid from its stream id
    # ("PA_...|TR_..."). The track id half is the sending track's id unless
    # given (a retired section must not keep the name of the track it carried).
    sender._stream_id = stream_id
    if track_id is not None:
        sender._track_id = track_id


def msid_track_ids(sdp: str) -> dict[str, str]:
    """mid -> the track id of the ``a=msid`` line of each m-section of ``sdp`` that has both."""
    found: dict[str, str] = {}
    mid = track_id = ""
    for line in [*sdp.splitlines(), "m=end"]:
        if line.startswith("m="):
            if mid and track_id:
                found[mid] = track_id
            mid = track_id = ""
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :].strip()
        elif line.startswith("a=msid:"):
            parts = line[len("a=msid:") :].split()
            if len(parts) == 2:
                track_id = parts[1]
    return found


def sending_tracks(sdp: str) -> dict[str, str]:
    """Track id -> media kind (``audio``/``video``) of each m-section of ``sdp`` that sends.

    Track ids come from ``a=msid:<stream> <track>``, in order of appearance.
    """
    found: dict[str, str] = {}
    kind = direction = ""
    current: list[str] = []
    for line in [*sdp.splitlines(), "m=end"]:
        if line.startswith("m="):
            if direction in ("sendonly", "sendrecv"):
                found.update(dict.fromkeys(current, kind))
            kind, direction, current = line[2:].split(" ", 1)[0], "sendrecv", []
        elif line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
            direction = line[2:]
        elif line.startswith("a=msid:"):
            parts = line[len("a=msid:") :].split()
            if len(parts) == 2:
                current.append(parts[1])
    return found
