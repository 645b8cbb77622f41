"""Tools for testing code built on livekit-lifecycle (and any LiveKit agent).

:class:`RoomDriver` drives a real, unconnected ``livekit.rtc.Room`` by feeding
it real ``RoomEvent`` protobufs, so the SDK's own translation code creates the
``RemoteParticipant`` and publication objects and emits the events your
handlers see in production. No server, no credentials, no network.
:mod:`~livekit_lifecycle.testing.virtual_time` runs such tests on a loop whose
clock jumps over waits, so a 30 s grace window takes no time.

End-to-end tests against a LiveKit-compatible server on this machine use the
separate ``livekit-loopback`` distribution (``livekit_loopback.LoopbackServer``,
its pytest plugin, a browser client and a redis-server helper), which
``pip install 'livekit-lifecycle[testing]'`` brings in.
"""

from __future__ import annotations

from ._driver import RoomDriver

__all__ = ["RoomDriver"]
