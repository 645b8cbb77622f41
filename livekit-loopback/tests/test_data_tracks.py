"""Data tracks through the LoopbackServer, published and subscribed by real SDK clients.

Frames travel on a lossy data channel: a frame pushed before the subscriber's
handle reached it is dropped, as with livekit-server, so the publisher pushes
until the subscriber has what the test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import rtc

from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT

pytestmark = pytest.mark.e2e

ROOM = "room"
both_paths = pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-v0"])


def _options(single_pc: bool, encryption: rtc.E2EEOptions | None = None) -> rtc.RoomOptions:
    return rtc.RoomOptions(single_peer_connection=single_pc, encryption=encryption)


def _published(room: rtc.Room) -> asyncio.Queue[rtc.RemoteDataTrack]:
    found: asyncio.Queue[rtc.RemoteDataTrack] = asyncio.Queue()
    room.on("data_track_published", found.put_nowait)
    return found


@contextlib.asynccontextmanager
async def _pushing(track: rtc.LocalDataTrack) -> AsyncIterator[None]:
    """``track`` pushes frame n (payload ``frame n``, user timestamp 1000 + n) 20 times a second."""

    async def push() -> None:
        n = 0
        while True:
            track.try_push(rtc.DataTrackFrame(payload=b"frame %d" % n, user_timestamp=1000 + n))
            n += 1
            await asyncio.sleep(0.05)

    task = asyncio.get_running_loop().create_task(push())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _frames(track: rtc.RemoteDataTrack, count: int) -> list[tuple[bytes, int | None]]:
    stream = track.subscribe()
    found: list[tuple[bytes, int | None]] = []

    async def read() -> None:
        async for frame in stream:
            found.append((frame.payload, frame.user_timestamp))
            if len(found) == count:
                return

    await asyncio.wait_for(read(), WAIT)
    return found


def _in_order(frames: list[tuple[bytes, int | None]]) -> bool:
    """Each frame as pushed (its payload names its timestamp), in the order pushed."""
    numbers = [int(payload.split()[1]) for payload, _ in frames]
    return numbers == sorted(set(numbers)) and all(
        timestamp == 1000 + n for n, (_, timestamp) in zip(numbers, frames, strict=True)
    )


@both_paths
async def test_a_data_track_reaches_each_subscriber(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    bob = await loopback_server.connect("bob", ROOM, options=_options(single_pc))
    at_bob = _published(bob)
    alice = await loopback_server.connect("alice", ROOM, options=_options(not single_pc))
    track = await alice.local_participant.publish_data_track(name="sensor")
    assert track.info.name == "sensor" and track.info.sid.startswith("DTR_")

    remote = await asyncio.wait_for(at_bob.get(), WAIT)
    assert (remote.info.sid, remote.info.name, remote.publisher_identity) == (
        track.info.sid,
        "sensor",
        "alice",
    )
    # Someone joining later hears of it in the join response, while it connects: listen first.
    carol = rtc.Room()
    at_carol = _published(carol)
    token = loopback_server.token("carol", ROOM)
    await carol.connect(loopback_server.url, token, _options(not single_pc))
    try:
        late = await asyncio.wait_for(at_carol.get(), WAIT)
        assert late.info.sid == track.info.sid
        async with _pushing(track):
            frames = await asyncio.gather(_frames(remote, 5), _frames(late, 5))
    finally:
        await carol.disconnect()
    assert all(_in_order(f) for f in frames), frames

    unpublished: asyncio.Queue[str] = asyncio.Queue()
    bob.on("data_track_unpublished", unpublished.put_nowait)
    await track.unpublish()
    assert await asyncio.wait_for(unpublished.get(), WAIT) == track.info.sid


async def test_an_end_to_end_encrypted_data_track_is_read_with_the_key(
    loopback_server: LoopbackServer,
) -> None:
    key = rtc.KeyProviderOptions(shared_key=b"only the clients know this")
    encryption = rtc.E2EEOptions(key_provider_options=key)
    bob = await loopback_server.connect("bob", ROOM, options=_options(True, encryption))
    at_bob = _published(bob)
    alice = await loopback_server.connect("alice", ROOM, options=_options(False, encryption))
    track = await alice.local_participant.publish_data_track(name="secret")
    remote = await asyncio.wait_for(at_bob.get(), WAIT)
    assert track.info.uses_e2ee and remote.info.uses_e2ee
    async with _pushing(track):
        frames = await _frames(remote, 3)
    assert _in_order(frames), frames


async def test_a_data_track_is_refused_without_the_grant_or_under_a_taken_name(
    loopback_server: LoopbackServer,
) -> None:
    quiet = await loopback_server.connect("quiet", ROOM, can_publish_data=False)
    with pytest.raises(rtc.participant.PublishDataTrackError):
        await quiet.local_participant.publish_data_track(name="sensor")
    alice = await loopback_server.connect("alice", ROOM)
    first = await alice.local_participant.publish_data_track(name="sensor")
    with pytest.raises(rtc.participant.PublishDataTrackError):
        await alice.local_participant.publish_data_track(name="sensor")
    assert first.is_published()
