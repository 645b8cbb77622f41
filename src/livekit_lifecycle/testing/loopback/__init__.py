"""A LiveKit-compatible server on this machine, for end-to-end tests without Docker or a cloud.

Needs the ``testing`` extra (``pip install 'livekit-lifecycle[testing]'``,
which brings aiortc, aiohttp and livekit-api) and a non-loopback network
interface. See ``docs/testing.md``.
"""

from __future__ import annotations

try:
    import aiohttp  # noqa: F401
    import aiortc  # noqa: F401
    import livekit.api  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "livekit_lifecycle.testing.loopback needs the optional 'testing' dependencies"
        " (aiortc, aiohttp, livekit-api): pip install 'livekit-lifecycle[testing]'"
    ) from exc

from ._net import LoopbackUnavailable, ice_addresses
from ._room import ParticipantView
from .server import LoopbackServer

__all__ = ["LoopbackServer", "LoopbackUnavailable", "ParticipantView", "ice_addresses"]
