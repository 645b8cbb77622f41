"""Twirp ``livekit.AgentDispatchService``: create, delete and list a room's agent dispatches.

As livekit-server: every call needs a token granting ``roomAdmin`` for the
room, and ``CreateDispatch`` on a room that does not exist creates it (with
its default dispatch, like any new room).
"""

from __future__ import annotations

from livekit.protocol import agent_dispatch as proto

from ._dispatch import AgentDispatcher
from ._service import RoomService
from ._tokens import TokenAuthority
from ._twirp import TwirpError, TwirpMethod, TwirpService

__all__ = ["agent_dispatch_service"]


def agent_dispatch_service(
    auth: TokenAuthority, rooms: RoomService, dispatcher: AgentDispatcher
) -> TwirpService:
    def admin(token: str, room: str) -> None:
        if not room:
            raise TwirpError("invalid_argument", "room is required")
        auth.verify_grant(token, "room_admin", room=room)

    async def create(request: proto.CreateAgentDispatchRequest, token: str) -> proto.AgentDispatch:
        admin(token, request.room)
        dispatch = dispatcher.create_dispatch(
            rooms.room(request.room),
            request.agent_name,
            metadata=request.metadata,
            attributes=request.attributes,
            deployment=request.deployment,
        )
        return dispatch.info()

    async def delete(request: proto.DeleteAgentDispatchRequest, token: str) -> proto.AgentDispatch:
        admin(token, request.room)
        try:
            return dispatcher.delete_dispatch(request.room, request.dispatch_id).info()
        except LookupError as exc:
            raise TwirpError("not_found", str(exc)) from None

    async def list_(
        request: proto.ListAgentDispatchRequest, token: str
    ) -> proto.ListAgentDispatchResponse:
        admin(token, request.room)
        found = [
            dispatch.info()
            for dispatch in dispatcher.dispatches.get(request.room, ())
            if not request.dispatch_id or dispatch.id == request.dispatch_id
        ]
        return proto.ListAgentDispatchResponse(agent_dispatches=found)

    return TwirpService(
        "livekit.AgentDispatchService",
        {
            "CreateDispatch": TwirpMethod(proto.CreateAgentDispatchRequest, create),
            "DeleteDispatch": TwirpMethod(proto.DeleteAgentDispatchRequest, delete),
            "ListDispatch": TwirpMethod(proto.ListAgentDispatchRequest, list_),
        },
    )
