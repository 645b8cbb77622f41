"""Twirp ``livekit.RoomService``: rooms and participants, as a job's ``ctx.api.room`` uses them.

Implemented: ``ListRooms`` (grant ``roomList``), ``DeleteRoom`` (``roomCreate``),
and, with ``roomAdmin`` for the room, ``ListParticipants``, ``GetParticipant``,
``RemoveParticipant``, ``UpdateParticipant``, ``MutePublishedTrack`` and
``SendData``. Other methods answer Twirp ``bad_route``.
"""

from __future__ import annotations

from livekit.protocol import models
from livekit.protocol import room as proto

from ._peer import LOSSY, RELIABLE
from ._room import Participant, Room
from ._service import RoomService
from ._tokens import TokenAuthority
from ._twirp import TwirpError, TwirpMethod, TwirpService

__all__ = ["room_service"]

_REASON = models.DisconnectReason


def room_service(auth: TokenAuthority, rooms: RoomService) -> TwirpService:
    def find_room(name: str) -> Room:
        found = rooms.rooms.get(name)
        if found is None:
            raise TwirpError("not_found", f"no room named {name!r}")
        return found

    def admin(token: str, room: str) -> Room:
        auth.verify_grant(token, "room_admin", room=room)
        return find_room(room)

    def participant(token: str, room: str, identity: str) -> Participant:
        found = admin(token, room).participants.get(identity)
        if found is None:
            raise TwirpError("not_found", f"no participant {identity!r} in room {room!r}")
        return found

    async def list_rooms(request: proto.ListRoomsRequest, token: str) -> proto.ListRoomsResponse:
        auth.verify_grant(token, "room_list")
        names = set(request.names)
        return proto.ListRoomsResponse(
            rooms=[r.info() for name, r in rooms.rooms.items() if not names or name in names]
        )

    async def delete_room(request: proto.DeleteRoomRequest, token: str) -> proto.DeleteRoomResponse:
        auth.verify_grant(token, "room_create")
        find_room(request.room)
        rooms.close_room(request.room, _REASON.ROOM_DELETED)
        return proto.DeleteRoomResponse()

    async def list_participants(
        request: proto.ListParticipantsRequest, token: str
    ) -> proto.ListParticipantsResponse:
        found = admin(token, request.room)
        return proto.ListParticipantsResponse(participants=[p.snapshot() for p in found])

    async def get_participant(
        request: proto.RoomParticipantIdentity, token: str
    ) -> models.ParticipantInfo:
        return participant(token, request.room, request.identity).snapshot()

    async def remove_participant(
        request: proto.RoomParticipantIdentity, token: str
    ) -> proto.RemoveParticipantResponse:
        found = participant(token, request.room, request.identity)
        rooms.remove(found, _REASON.PARTICIPANT_REMOVED, tell_participant=True)
        return proto.RemoveParticipantResponse()

    async def update_participant(
        request: proto.UpdateParticipantRequest, token: str
    ) -> models.ParticipantInfo:
        found = participant(token, request.room, request.identity)
        rooms.update_participant(
            found,
            name=request.name,
            metadata=request.metadata,
            attributes=request.attributes,
            permission=request.permission if request.HasField("permission") else None,
        )
        return found.snapshot()

    async def mute_published_track(
        request: proto.MuteRoomTrackRequest, token: str
    ) -> proto.MuteRoomTrackResponse:
        found = participant(token, request.room, request.identity)
        try:
            track = rooms.mute_track(found, request.track_sid, request.muted)
        except LookupError as exc:
            raise TwirpError("not_found", str(exc)) from None
        return proto.MuteRoomTrackResponse(track=track)

    async def send_data(request: proto.SendDataRequest, token: str) -> proto.SendDataResponse:
        found = admin(token, request.room)
        destinations = list(request.destination_identities)
        packet = models.DataPacket(
            kind=request.kind,
            destination_identities=destinations,
            user=models.UserPacket(
                payload=request.data,
                topic=request.topic if request.HasField("topic") else None,
                destination_identities=destinations,
                nonce=request.nonce,
            ),
        )
        label = LOSSY if request.kind == models.DataPacket.LOSSY else RELIABLE
        rooms.deliver_data(found, packet, label, sender=None)
        return proto.SendDataResponse()

    return TwirpService(
        "livekit.RoomService",
        {
            "ListRooms": TwirpMethod(proto.ListRoomsRequest, list_rooms),
            "DeleteRoom": TwirpMethod(proto.DeleteRoomRequest, delete_room),
            "ListParticipants": TwirpMethod(proto.ListParticipantsRequest, list_participants),
            "GetParticipant": TwirpMethod(proto.RoomParticipantIdentity, get_participant),
            "RemoveParticipant": TwirpMethod(proto.RoomParticipantIdentity, remove_participant),
            "UpdateParticipant": TwirpMethod(proto.UpdateParticipantRequest, update_participant),
            "MutePublishedTrack": TwirpMethod(proto.MuteRoomTrackRequest, mute_published_track),
            "SendData": TwirpMethod(proto.SendDataRequest, send_data),
        },
    )
