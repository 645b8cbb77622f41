"""The headless-Chromium support browser tests build on (testing.browser, chromium fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from aiohttp import web

from livekit_loopback.browser import CHROMIUM_ENV, ConsoleLog, find_chromium
from livekit_loopback.support import eventually

if TYPE_CHECKING:
    from playwright.async_api import Browser

_PAGE = """<!doctype html><title>t</title><link rel="icon" href="data:,"><h1 id="h">ready</h1>
<script>
console.log("hello");
console.error("boom: removeTrack failed");
setTimeout(() => { throw new Error("uncaught later"); }, 0);
Promise.reject(new Error("unhandled rejection"));
</script>"""


@pytest_asyncio.fixture
async def page_url() -> AsyncIterator[str]:
    app = web.Application()

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.mark.browser
async def test_console_log_collects_errors_and_rejections(
    chromium: Browser, page_url: str, tmp_path: Path
) -> None:
    page = await chromium.new_page()
    console = ConsoleLog.attach(page)
    await page.goto(page_url)
    assert await page.inner_text("#h") == "ready"
    assert await eventually(lambda: len(console.errors) >= 3, timeout=5), console.text()
    assert [(e.kind, e.text) for e in console.errors] == [
        ("error", "boom: removeTrack failed"),
        ("pageerror", "uncaught later"),
        ("pageerror", "unhandled rejection"),
    ]
    assert [e.text for e in console.matching("removetrack")] == ["boom: removeTrack failed"]
    assert any(e.text == "hello" and e.kind == "log" for e in console.entries)
    with pytest.raises(AssertionError, match="3 error"):
        console.raise_for_errors()
    await page.screenshot(path=str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0


def test_find_chromium_prefers_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable = tmp_path / "my-chromium"
    executable.write_text("#!/bin/sh\n")
    monkeypatch.setenv(CHROMIUM_ENV, str(executable))
    assert find_chromium() == str(executable)
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "missing"))
    assert find_chromium() != str(tmp_path / "missing")
