"""``livekit-lifecycle demo --web``: the demo, with its manager's page served alongside."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from livekit_lifecycle._watch import _stop_on_signals
from livekit_lifecycle.manager import LifecycleManager

from ._serve import serve_inspector
from ._server import Inspector

__all__ = ["play_with_web"]

VIEWER_WAIT = 30.0
"""Seconds the demo waits for the page to be opened before it starts anyway."""


async def play_with_web(
    play: Callable[[Callable[[LifecycleManager], Awaitable[None]]], Awaitable[int]],
    *,
    out: TextIO | None = None,
    viewer_wait: float = VIEWER_WAIT,
    linger: bool = True,
) -> int:
    """Run ``play(serve)``; ``serve(manager)`` starts the page and waits for a viewer.

    After the demo the page stays up (every session's last state, removed
    ones included) until Ctrl-C, unless ``linger`` is false.
    """
    out = out or sys.stdout
    served: list[Inspector] = []

    async def serve(manager: LifecycleManager) -> None:
        inspector = await serve_inspector(manager)
        served.append(inspector)
        print(f"inspector: {inspector.url}", file=out, flush=True)
        print(
            f"open it: the demo starts when the page is open (or in {viewer_wait:.0f} s)",
            file=out,
            flush=True,
        )
        await inspector.wait_for_viewer(viewer_wait)

    try:
        code = await play(serve)
        if served and linger:
            print(
                f"\ndemo over; the page stays up at {served[0].url} until Ctrl-C",
                file=out,
                flush=True,
            )
            stop = asyncio.Event()
            with _stop_on_signals(stop):
                await stop.wait()
        return code
    finally:
        for inspector in served:
            await inspector.aclose()
