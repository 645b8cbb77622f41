"""Twirp RoomService through livekit-api's own client, seen by real ``rtc.Room`` clients."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import api, rtc

from livekit_loopback import LoopbackServer
from livekit_loopback.audio import Tone
from livekit_loopback.support import WAIT, Recorder

pytestmark = pytest.mark.e2e

ROOM = "room"
REASON = rtc.DisconnectReason


async def test_rooms_and_participants_are_listed(
    loopback_server: LoopbackServer, lkapi: api.LiveKitAPI
) -> None:
    await loopback_server.connect("alice", ROOM)
    await loopback_server.connect("bob", "other")

    rooms = (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms
    assert sorted(r.name for r in rooms) == sorted([ROOM, "other"])
    assert all(r.sid.startswith("RM_") and r.num_participants == 1 for r in rooms)
    only = (await lkapi.room.list_rooms(api.ListRoomsRequest(names=["other"]))).rooms
    assert [r.name for r in only] == ["other"]

    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
    assert [p.identity for p in listed.participants] == ["alice"]
    alice = await lkapi.room.get_participant(
        api.RoomParticipantIdentity(room=ROOM, identity="alice")
    )
    assert alice.sid == listed.participants[0].sid
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="nobody"))
    assert missing.value.code == "not_found"


async def test_participant_updates_removal_and_room_deletion_reach_the_clients(
    loopback_server: LoopbackServer, lkapi: api.LiveKitAPI
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    alice = await loopback_server.connect("alice", ROOM)
    await events.wait_for("participant_active", identity="alice")
    # The participant hears of its own update too (its local participant's attributes).
    own_update: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    alice.on(
        "participant_attributes_changed",
        lambda changed, who: (
            own_update.set_result(dict(who.attributes))
            if who is alice.local_participant and not own_update.done()
            else None
        ),
    )

    updated = await lkapi.room.update_participant(
        api.UpdateParticipantRequest(
            room=ROOM, identity="alice", metadata="vip", attributes={"tier": "gold"}, name="Alice"
        )
    )
    assert updated.metadata == "vip" and dict(updated.attributes) == {"tier": "gold"}
    await events.wait_for("participant_attributes_changed", identity="alice")
    await events.wait_for("participant_metadata_changed", identity="alice")
    seen = observer.remote_participants["alice"]
    assert seen.attributes == {"tier": "gold"} and seen.metadata == "vip" and seen.name == "Alice"
    assert await asyncio.wait_for(own_update, WAIT) == {"tier": "gold"}

    await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=ROOM, identity="alice"))
    left = await events.wait_for("participant_disconnected", identity="alice")
    assert left.reason == REASON.PARTICIPANT_REMOVED

    observer_gone = asyncio.get_running_loop().create_future()
    observer.on("disconnected", lambda reason: observer_gone.set_result(reason))
    await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
    assert await asyncio.wait_for(observer_gone, WAIT) == REASON.ROOM_DELETED
    assert loopback_server.rooms == ()
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
    assert missing.value.code == "not_found"


async def test_server_mute_and_server_data_reach_the_clients(
    loopback_server: LoopbackServer, lkapi: api.LiveKitAPI
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    received: asyncio.Future[rtc.DataPacket] = asyncio.get_running_loop().create_future()
    observer.on("data_received", lambda packet: received.set_result(packet))
    alice = await loopback_server.connect("alice", ROOM)
    async with Tone(440) as tone:
        publication = await alice.local_participant.publish_track(tone.track)
        await events.wait_for("track_published", identity="alice")

        muted = await lkapi.room.mute_published_track(
            api.MuteRoomTrackRequest(
                room=ROOM, identity="alice", track_sid=publication.sid, muted=True
            )
        )
        assert muted.track.sid == publication.sid and muted.track.muted
        await events.wait_for("track_muted", identity="alice")

    await lkapi.room.send_data(
        api.SendDataRequest(
            room=ROOM,
            data=b"hello",
            kind=api.DataPacket.RELIABLE,
            topic="news",
            destination_identities=["observer"],
        )
    )
    packet = await asyncio.wait_for(received, WAIT)
    assert packet.data == b"hello" and packet.topic == "news" and packet.participant is None


async def test_room_service_needs_the_right_grants(
    loopback_server: LoopbackServer, lkapi: api.LiveKitAPI
) -> None:
    await loopback_server.connect("alice", ROOM)
    url = loopback_server.url
    weak = api.LiveKitAPI(url, loopback_server.api_key, "x" * 32)
    try:
        with pytest.raises(api.TwirpError) as refused:
            await weak.room.list_rooms(api.ListRoomsRequest())
        assert refused.value.code == "unauthenticated"
    finally:
        await weak.aclose()
    assert loopback_server.rooms == (ROOM,)
