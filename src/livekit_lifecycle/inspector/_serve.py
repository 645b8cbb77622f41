"""``serve_inspector(manager)``: the live page for a manager of this process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._server import Inspector
from ._source import ManagerSource

if TYPE_CHECKING:
    from livekit_lifecycle.manager import LifecycleManager

__all__ = ["serve_inspector"]


async def serve_inspector(
    manager: LifecycleManager,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    show_data: bool = False,
) -> Inspector:
    """Serve the live statechart page for ``manager``; ``await inspector.aclose()`` to stop.

    Binds ``host`` (loopback by default); any other address needs a
    token, generated unless given, that every request must carry
    (``inspector.url`` includes it). ``data`` is shown only with
    ``show_data``. Needs aiohttp (the ``inspector`` extra).
    """
    return await Inspector.start(
        ManagerSource(manager, show_data=show_data), host=host, port=port, token=token
    )
