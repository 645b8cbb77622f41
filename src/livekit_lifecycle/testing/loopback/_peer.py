"""The server side of a client's PeerConnection, played by aiortc.

The SDK's ``Room.connect`` waits until its PeerConnection is ``connected``
(ICE and DTLS done), so the server needs a real WebRTC peer. aiortc answers
the client's publisher offers; no media is forwarded. aiortc gathers every
host candidate while it builds the answer, so the answer carries them and the
server never trickles.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import rtc as signal

from livekit_lifecycle._callbacks import describe
from livekit_lifecycle.log import get_logger

__all__ = ["Peer", "sending_tracks"]

_CONNECT_STATES = ("connected",)
_LOST_STATES = ("failed", "closed")


class Peer:
    """One aiortc ``RTCPeerConnection`` answering one client's publisher offers.

    Offers and candidates are applied strictly in arrival order (candidates
    that come before the first offer wait for it). ``on_connected`` fires
    the first time ICE and DTLS complete.
    """

    def __init__(self, label: str, on_connected: Callable[[], None]) -> None:
        self._label = label
        self._on_connected = on_connected
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._lock = asyncio.Lock()
        self._described = False
        self._early: list[signal.TrickleRequest] = []
        self._connected_once = False
        self._closed = False
        self._log = get_logger("livekit_lifecycle.loopback").bind(peer=label)
        self._pc.on("connectionstatechange", self._state_changed)

    @property
    def state(self) -> str:
        """aiortc's ``connectionState``: new, connecting, connected, failed or closed."""
        return str(self._pc.connectionState)

    def _state_changed(self) -> None:
        state = self._pc.connectionState
        self._log.debug("peer.state", state=state)
        if state in _CONNECT_STATES and not self._connected_once:
            self._connected_once = True
            try:
                self._on_connected()
            except Exception:
                self._log.exception("peer.callback_failed", callback=describe(self._on_connected))

    async def answer(self, offer: signal.SessionDescription) -> signal.SessionDescription:
        """Apply the client's offer and return the answer to send back (same ``id``)."""
        async with self._lock:
            if self._closed:
                raise ConnectionError(f"peer {self._label} is closed")
            await self._pc.setRemoteDescription(
                RTCSessionDescription(sdp=offer.sdp, type=offer.type or "offer")
            )
            if not self._described:
                self._described = True
                early, self._early = self._early, []
                for trickle in early:
                    await self._add(trickle)
            answer = await self._pc.createAnswer()
            await self._pc.setLocalDescription(answer)
            local = self._pc.localDescription
            return signal.SessionDescription(type="answer", sdp=local.sdp, id=offer.id)

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

    async def close(self) -> None:
        """Close the PeerConnection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._pc.close()


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
