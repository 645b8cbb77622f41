"""A LiveKit-compatible server on this machine, for end-to-end tests without Docker or a cloud.

:class:`LoopbackServer` speaks LiveKit's signalling protocol and forwards media
(aiortc), so real SDK clients (``livekit.rtc.Room``, livekit-client in a
browser) connect to it. Also here: a pytest plugin (registered on install;
:mod:`livekit_loopback.pytest_plugin`), a headless-Chromium client
(:mod:`livekit_loopback.browser_client`), a redis-server of a test's own
(:mod:`livekit_loopback.redis_server`) and audio checks
(:mod:`livekit_loopback.audio`). Needs a non-loopback network interface. See
``docs/testing.md``.
"""

from __future__ import annotations

from ._agent_views import DispatchView, JobView, WorkerView
from ._net import LoopbackUnavailable, ice_addresses
from ._room import ParticipantView
from .server import LoopbackServer

__all__ = [
    "DispatchView",
    "JobView",
    "LoopbackServer",
    "LoopbackUnavailable",
    "ParticipantView",
    "WorkerView",
    "ice_addresses",
]
