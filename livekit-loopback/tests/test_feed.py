"""TrackFeed and ForwardedTrack: one incoming track read once, bounded copies for each subscriber.

The source is aiortc's own ``AudioStreamTrack`` (20 ms frames of silence, in
real time), the kind of track the server reads from a publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from livekit_loopback._media import ForwardedTrack, TrackFeed
from livekit_loopback.support import WAIT, eventually


async def _drain(track: ForwardedTrack) -> int:
    """Frames ``track`` still yields before it ends (it must end)."""
    received = 0
    try:
        while True:
            await asyncio.wait_for(track.recv(), WAIT)
            received += 1
    except MediaStreamError:
        return received


class Tasks:
    def __init__(self) -> None:
        self.started: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.started.append(task)
        return task

    async def finish(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.started, return_exceptions=True), WAIT)


async def test_each_subscriber_gets_every_frame_then_the_end() -> None:
    tasks = Tasks()
    source = AudioStreamTrack()
    feed = TrackFeed(source, "room/alice/mic", tasks.spawn)
    first = feed.subscribe("PA_1", "TR_1")
    second = feed.subscribe("PA_2", "TR_1")
    assert (first.id, first.kind, feed.subscribers) == ("TR_1", "audio", 2)

    frames = [await asyncio.wait_for(first.recv(), WAIT) for _ in range(3)]
    assert [await asyncio.wait_for(second.recv(), WAIT) for _ in range(3)] == frames

    feed.unsubscribe("PA_1")
    assert feed.subscribers == 1
    await _drain(first)  # what was queued, then the end

    source.stop()  # the publisher's track ends: so does every subscriber's
    await _drain(second)
    await tasks.finish()
    assert not feed.live and feed.subscribers == 0


async def test_a_subscriber_that_does_not_read_keeps_only_the_latest_frames() -> None:
    tasks = Tasks()
    feed = TrackFeed(AudioStreamTrack(), "room/alice/mic", tasks.spawn)
    idle = feed.subscribe("PA_1", "TR_1")
    start = feed.frames
    assert await eventually(lambda: feed.frames >= start + 40, WAIT)  # 0.8 s, queue holds 0.5
    assert idle._queue.qsize() == idle._queue.maxsize
    feed.close()
    await tasks.finish()
    # Closed: the oldest frame made room for the end.
    assert await _drain(idle) == idle._queue.maxsize - 1


async def test_an_ended_track_takes_no_more_frames() -> None:
    track = ForwardedTrack("audio", "TR_1")
    track.end()
    track.end()  # idempotent
    track.push(object())  # type: ignore[arg-type]
    with pytest.raises(MediaStreamError):
        await track.recv()
    with pytest.raises(MediaStreamError):
        await track.recv()
