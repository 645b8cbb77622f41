"""Tools for testing code built on livekit-lifecycle (and any LiveKit agent).

:class:`RoomDriver` drives a real, unconnected ``livekit.rtc.Room`` by feeding
it real ``RoomEvent`` protobufs, so the SDK's own translation code creates the
``RemoteParticipant`` and publication objects and emits the events your
handlers see in production. No server, no credentials, no network.
:mod:`~livekit_lifecycle.testing.virtual_time` runs such tests on a loop whose
clock jumps over waits, so a 30 s grace window takes no time.
:class:`LoopbackServer` is a LiveKit-compatible server on this machine for
end-to-end tests (it forwards media), and :mod:`~livekit_lifecycle.testing.audio`
publishes tones and measures the pitch that arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._driver import RoomDriver

if TYPE_CHECKING:
    from .loopback import LoopbackServer

__all__ = ["LoopbackServer", "RoomDriver"]


def __getattr__(name: str) -> Any:
    # LoopbackServer pulls in aiortc (the optional `testing` extra): import it
    # only when asked for, so RoomDriver works without the extra.
    if name == "LoopbackServer":
        from .loopback import LoopbackServer

        return LoopbackServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
