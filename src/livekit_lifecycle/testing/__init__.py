"""Tools for testing code built on livekit-lifecycle (and any LiveKit agent).

:class:`RoomDriver` drives a real, unconnected ``livekit.rtc.Room`` by feeding
it real ``RoomEvent`` protobufs, so the SDK's own translation code creates the
``RemoteParticipant`` and publication objects and emits the events your
handlers see in production. No server, no credentials, no network.
"""

from __future__ import annotations

from ._driver import RoomDriver

__all__ = ["RoomDriver"]
