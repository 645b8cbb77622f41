"""What one participant receives: its subscribed tracks and the negotiation that carries them.

Two ways to carry them, one per signalling protocol:

* ``/rtc/v1`` (single PeerConnection): the client always offers. The
  server asks it for receive sections (``MediaSectionsRequirement``); the
  client adds recvonly transceivers and offers again, and the server's
  answer puts subscribed tracks on free recvonly sections
  (:meth:`Downlink.arrange`, run by :class:`~._peer.Peer` before each answer).
* ``/rtc`` (two PeerConnections): the server offers the client's subscriber
  PeerConnection, one sendonly section per subscribed track, and waits for
  the client's answer before offering again (:meth:`Downlink._negotiate`).

A section whose subscription ended is made inactive and never reused, so
the client never sees a new track on a section it already knows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiortc import RTCRtpTransceiver
from livekit.protocol import rtc as signal

from ._log import get_logger
from ._media import ForwardedTrack, Spawn
from ._peer import Peer

__all__ = ["Downlink"]

_ANSWER_TIMEOUT = 10.0


@dataclass(eq=False)
class _Outgoing:
    publisher_sid: str
    track_sid: str
    track: ForwardedTrack
    transceiver: RTCRtpTransceiver | None = None

    @property
    def stream_id(self) -> str:
        return f"{self.publisher_sid}|{self.track_sid}"


class Downlink:
    """The tracks forwarded to one participant, over ``peer``.

    With ``offers`` (``/rtc``), ``peer`` is the server side of the client's
    subscriber PeerConnection and the server offers it; otherwise ``peer``
    is the single PeerConnection and the server only answers.
    """

    def __init__(
        self,
        peer: Peer,
        *,
        offers: bool,
        send: Callable[[signal.SignalResponse], None],
        spawn: Spawn,
        label: str,
    ) -> None:
        self.peer = peer
        self._offers = offers
        self._send = send
        self._spawn = spawn
        self._label = label
        self._tracks: dict[str, _Outgoing] = {}
        self._retired: set[RTCRtpTransceiver] = set()
        self._log = get_logger().bind(downlink=label)
        # /rtc/v1: sections asked for and not yet seen in an offer, per kind.
        self._requested = {"audio": 0, "video": 0}
        self._answered_once = False
        # /rtc: one negotiation at a time; changes during one start another.
        self._dirty = False
        self._negotiation: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[None] | None = None
        self._offer_id = 0
        self._closed = False
        if not offers:
            peer.arrange = self.arrange

    @property
    def track_sids(self) -> frozenset[str]:
        """Sids of the tracks forwarded now."""
        return frozenset(self._tracks)

    def has(self, track_sid: str) -> bool:
        return track_sid in self._tracks

    def add(self, publisher_sid: str, track: ForwardedTrack) -> None:
        """Forward ``track`` (of ``publisher_sid``) to this participant."""
        if self._closed or track.id in self._tracks:
            track.end()
            return
        self._tracks[track.id] = _Outgoing(publisher_sid, track.id, track)
        self._changed()

    def remove(self, track_sid: str) -> None:
        """Stop forwarding ``track_sid``; its section goes inactive at the next negotiation."""
        outgoing = self._tracks.pop(track_sid, None)
        if outgoing is None:
            return
        outgoing.track.end()
        if outgoing.transceiver is not None:
            Peer.retire(outgoing.transceiver)
            self._retired.add(outgoing.transceiver)
            if self._offers:
                self._changed()

    def close(self) -> None:
        """Stop forwarding everything (the peer is closed by its owner)."""
        self._closed = True
        for outgoing in self._tracks.values():
            outgoing.track.end()
        self._tracks.clear()
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        if self._negotiation is not None:
            self._negotiation.cancel()

    def negotiate(self) -> None:
        """Offer the client's subscriber PeerConnection now (``/rtc`` only)."""
        if self._offers:
            self._changed()

    def _changed(self) -> None:
        if self._offers:
            self._dirty = True
            if self._negotiation is None or self._negotiation.done():
                self._negotiation = self._spawn(
                    self._negotiate(), f"loopback-negotiate:{self._label}"
                )
        elif self._answered_once:
            self._request_sections()

    def _mids(self) -> Mapping[str, str]:
        return {
            o.transceiver.mid: o.track_sid
            for o in self._tracks.values()
            if o.transceiver is not None and o.transceiver.mid is not None
        }

    # ------------------------------------------------------------------ /rtc/v1: answers

    def arrange(self, transceivers: list[RTCRtpTransceiver]) -> Mapping[str, str]:
        """Put waiting tracks on free recvonly sections of the offer just applied."""
        free = [
            t
            for t in transceivers
            if t.mid is not None
            and t not in self._retired
            and t.sender.track is None
            # The client offered it recvonly: the server may send on it.
            and t._offerDirection == "sendonly"
        ]
        for outgoing in self._tracks.values():
            if outgoing.transceiver is not None:
                continue
            slot = next((t for t in free if t.kind == outgoing.track.kind), None)
            if slot is None:
                continue
            free.remove(slot)
            Peer.send_on(slot, outgoing.track, outgoing.stream_id)
            outgoing.transceiver = slot
            kind = outgoing.track.kind
            self._requested[kind] = max(0, self._requested[kind] - 1)
        self._answered_once = True
        if any(o.transceiver is None for o in self._tracks.values()):
            # After this answer, not before: asking the client for sections
            # while its offer is being answered would make it renegotiate
            # in the middle of this negotiation.
            asyncio.get_running_loop().call_soon(self._request_sections)
        return self._mids()

    def _request_sections(self) -> None:
        """Ask the client for one more recvonly section per track waiting for one.

        Sections already asked for and not yet offered count as coming, so
        each waiting track is asked for once.
        """
        if self._closed:
            return
        missing = {"audio": 0, "video": 0}
        for outgoing in self._tracks.values():
            if outgoing.transceiver is None:
                missing[outgoing.track.kind] += 1
        audios = max(0, missing["audio"] - self._requested["audio"])
        videos = max(0, missing["video"] - self._requested["video"])
        if not audios and not videos:
            return
        self._requested["audio"] += audios
        self._requested["video"] += videos
        self._send(
            signal.SignalResponse(
                media_sections_requirement=signal.MediaSectionsRequirement(
                    num_audios=audios, num_videos=videos
                )
            )
        )

    # ------------------------------------------------------------------ /rtc: offers

    async def accept(self, answer: signal.SessionDescription) -> None:
        """The client answered the server's last offer."""
        await self.peer.accept(answer)
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    async def _negotiate(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty and not self._closed:
            self._dirty = False
            for outgoing in self._tracks.values():
                if outgoing.transceiver is None:
                    outgoing.transceiver = self.peer.add_sender(outgoing.track, outgoing.stream_id)
            self._offer_id += 1
            try:
                offer = await self.peer.offer(self._offer_id, self._mids())
            except ConnectionError:
                return
            self._answer = loop.create_future()
            self._send(signal.SignalResponse(offer=offer))
            try:
                await asyncio.wait_for(asyncio.shield(self._answer), _ANSWER_TIMEOUT)
            except asyncio.TimeoutError:
                self._log.warning("downlink.no_answer", offer_id=self._offer_id)
                return
