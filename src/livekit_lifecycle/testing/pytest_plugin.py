"""pytest fixtures for end-to-end tests of LiveKit agents against a :class:`LoopbackServer`.

Enable it in your top-level ``conftest.py``::

    pytest_plugins = ["livekit_lifecycle.testing.pytest_plugin"]

and install the extra: ``pip install 'livekit-lifecycle[testing]'``. It needs
pytest-asyncio (the fixture is async; it works in both ``strict`` and ``auto``
mode, with a function-scoped event loop).

Fixtures:

``loopback_server``
    A running :class:`~livekit_lifecycle.testing.loopback.LoopbackServer`,
    one per test. Configure it with the ``loopback`` marker, whose keyword
    arguments go to the server::

        @pytest.mark.loopback(leave_timeout=1.0)
        async def test_refresh(loopback_server):
            agent = await loopback_server.connect("agent", "room", kind="agent")
            ...

    At teardown the server stops (rooms made with ``connect`` are
    disconnected first) and the test fails if the server left a socket or a
    task behind. Where the server cannot work — aiortc is not installed, or
    the machine has no non-loopback network interface (libwebrtc ignores
    loopback) — the test is skipped with the reason, never left hanging.

``chromium``
    A headless Chromium (a Playwright ``Browser``, see
    :mod:`livekit_lifecycle.testing.browser`), one per test. Mark such tests
    ``browser``. Without Playwright or a Chromium the test is skipped with the
    reason, unless ``LIVEKIT_LIFECYCLE_REQUIRE_BROWSER=1`` is set (CI sets it):
    then it fails, so a machine that lost its browser cannot pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from playwright.async_api import Browser

    from .loopback import LoopbackServer

__all__ = ["chromium", "loopback_server", "pytest_configure"]

_MARKER = "loopback"
REQUIRE_BROWSER_ENV = "LIVEKIT_LIFECYCLE_REQUIRE_BROWSER"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): keyword arguments for the loopback_server fixture's"
        " LoopbackServer (leave_timeout=..., single_pc=...)",
    )
    config.addinivalue_line(
        "markers",
        "browser: drives a headless Chromium (the chromium fixture; the browser extra)",
    )


@pytest_asyncio.fixture
async def loopback_server(request: pytest.FixtureRequest) -> AsyncIterator[LoopbackServer]:
    """A running LoopbackServer for this test (see the module docstring)."""
    try:
        from .loopback import LoopbackServer, LoopbackUnavailable
    except ImportError as exc:
        pytest.skip(f"LoopbackServer unavailable: {exc}")
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        options.update(marker.kwargs)
    server = LoopbackServer(**options)
    try:
        await server.start()
    except LoopbackUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        await server.stop()
    leaks = {
        "open signalling sockets": server.open_connections,
        "pending server tasks": server.pending_tasks,
    }
    left = {what: n for what, n in leaks.items() if n}
    if left:
        pytest.fail(f"the LoopbackServer left resources behind after stop(): {left}")


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium for this test (see the module docstring)."""
    from .browser import BrowserUnavailable, headless_chromium

    try:
        async with headless_chromium() as browser:
            yield browser
    except BrowserUnavailable as exc:
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"{REQUIRE_BROWSER_ENV}=1 but {exc}")
        pytest.skip(str(exc))
