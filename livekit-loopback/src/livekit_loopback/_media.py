"""Media fan-out: one published track read once, copied to every subscriber.

By default the copying is done on RTP packets, by the feed's
:class:`~._rtp_relay.RtpRelay`: nothing is decoded, and each subscriber's
:class:`ForwardedTrack` only holds its place on a sender (no frame is ever
pushed to it). With ``media="transcode"`` there is no relay, and frames flow
as follows. aiortc decodes what a publisher sends into frames (``RemoteStreamTrack``)
and encodes frames for each subscriber's sender. Between the two, a
:class:`TrackFeed` reads the publisher's track all the time, even with no
subscriber, because aiortc queues decoded frames without bound until someone
reads them; each subscriber gets a :class:`ForwardedTrack` whose queue is
bounded (the oldest frame goes first), so a slow or stalled subscriber costs
a fixed amount of memory and never holds the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from ._log import get_logger
from ._rtp_relay import LayerChoice, RtpRelay

__all__ = ["ForwardedTrack", "TrackFeed"]

_QUEUE_FRAMES = 25
"""Frames a subscriber may lag behind (0.5 s of 20 ms audio frames)."""

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


class ForwardedTrack(MediaStreamTrack):
    """What one subscriber's sender reads: the publisher's frames, through a bounded queue.

    Its ``id`` is the published track's sid, which is what the SDP's
    ``a=msid`` line carries and how the client's SDK names the track.
    """

    def __init__(self, kind: str, track_sid: str) -> None:
        super().__init__()
        self.kind = kind
        self._track_sid = track_sid
        self._queue: asyncio.Queue[Frame | Packet[Any] | None] = asyncio.Queue(_QUEUE_FRAMES)
        self._ended = False
        self.transceiver: RTCRtpTransceiver | None = None
        """Where the subscriber's PeerConnection sends it (set by the peer that places it)."""

    @property
    def id(self) -> str:
        return self._track_sid

    def push(self, frame: Frame | Packet[Any]) -> None:
        if self._ended or self.readyState != "live":
            return
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(frame)

    def end(self) -> None:
        """No more frames: the sender reading this track stops after what is queued."""
        if self._ended or self.readyState != "live":
            return
        self._ended = True
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def recv(self) -> Frame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class TrackFeed:
    """Reads one incoming track for as long as it lives and copies each frame to every sink."""

    def __init__(
        self, source: MediaStreamTrack, label: str, spawn: Spawn, relay: RtpRelay | None = None
    ) -> None:
        self.kind = source.kind
        self._source = source
        self.relay = relay
        """Set when RTP is forwarded as received: then ``source`` yields no frames."""
        self._sinks: dict[str, ForwardedTrack] = {}
        self._log = get_logger().bind(feed=label)
        self._task = spawn(self._run(), f"loopback-feed:{label}")
        self.frames = 0
        """Frames read so far (for tests and benchmarks)."""

    @property
    def live(self) -> bool:
        return not self._task.done()

    def subscribe(
        self, key: str, track_sid: str, choice: LayerChoice | None = None
    ) -> ForwardedTrack:
        """A new track fed from now on, under ``key`` (a previous one there is ended).

        ``choice``: the layer it asked for (relayed RTP only: decoded frames have no layers).
        """
        self.unsubscribe(key)
        sink = ForwardedTrack(self.kind, track_sid)
        if not self.live:
            sink.end()
        self._sinks[key] = sink
        if self.relay is not None:
            self.relay.add(key, sink, choice)
        return sink

    def unsubscribe(self, key: str) -> None:
        sink = self._sinks.pop(key, None)
        if self.relay is not None:
            self.relay.remove(key)
        if sink is not None:
            sink.end()

    @property
    def subscribers(self) -> int:
        return len(self._sinks)

    def close(self) -> None:
        """Stop reading; every subscriber's track ends."""
        self._task.cancel()
        if self.relay is not None:
            self.relay.close()
        self._end_all()

    def _end_all(self) -> None:
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.end()

    async def _run(self) -> None:
        try:
            while True:
                frame = await self._source.recv()
                self.frames += 1
                for sink in list(self._sinks.values()):
                    sink.push(frame)
        except MediaStreamError:
            self._log.debug("feed.ended", frames=self.frames)
        finally:
            self._end_all()
