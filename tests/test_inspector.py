"""The inspector (livekit_lifecycle.inspector): its server, access rules, sources and page."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import pytest_asyncio

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.cli import main
from livekit_lifecycle.inspector import Change, Inspector, ManagerSource, Source, serve_inspector
from livekit_lifecycle.testing import RoomDriver
from livekit_loopback.browser import ConsoleLog
from livekit_loopback.support import eventually

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

WAIT = 10.0


@pytest_asyncio.fixture
async def manager(driver: RoomDriver) -> AsyncIterator[LifecycleManager]:
    manager = LifecycleManager(LifecycleConfig(grace_period=30))
    manager.attach(driver.room)
    yield manager
    await manager.aclose()


async def get(url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        return response.status, await response.text()


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    block = (await asyncio.wait_for(response.content.readuntil(b"\n\n"), WAIT)).decode()
    fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
    return fields["event"], json.loads(fields["data"])


async def test_snapshot_then_live_changes_over_server_sent_events(
    manager: LifecycleManager, driver: RoomDriver
) -> None:
    driver.connect("alice", active=True)
    async with await serve_inspector(manager) as inspector:
        assert inspector.url.startswith("http://127.0.0.1:") and inspector.token is None
        async with (
            aiohttp.ClientSession() as http,
            http.get(inspector.url + "api/events") as response,
        ):
            assert response.headers["Content-Type"] == "text/event-stream"
            event, snapshot = await next_event(response)
            assert event == "snapshot" and snapshot["source"] == "room test-room, in-process"
            assert snapshot["states"] == [s.value for s in State]
            assert [(r["key"], r["state"]) for r in snapshot["rows"]] == [("alice", "active")]
            driver.disconnect("alice")
            states: list[str] = []
            while not states or states[-1] != "grace":
                event, change = await next_event(response)
                assert event == "change" and change["row"]["key"] == "alice"
                states.append(change["row"]["state"])
            assert states == ["disconnecting", "cleaned", "grace"]
            assert change["transition"]["trigger"] == "hold"
        status, svg = await get(inspector.url + "chart.svg")
        assert status == 200 and svg.startswith("<svg") and "<title>grace</title>" in svg


async def test_data_is_hidden_unless_asked_for(
    manager: LifecycleManager, driver: RoomDriver
) -> None:
    driver.connect("alice", active=True)
    session = manager.get("alice")
    assert session is not None
    session.data["transcript"] = ["secret words"]
    for show_data in (False, True):
        async with await serve_inspector(manager, show_data=show_data) as inspector:
            status, text = await get(inspector.url + "api/snapshot")
            assert status == 200
            (row,) = json.loads(text)["rows"]
            if show_data:
                assert row["data"] == {"transcript": "['secret words']"}
            else:
                assert "data" not in row and "secret" not in text


async def test_off_loopback_every_request_needs_the_token(manager: LifecycleManager) -> None:
    async with await serve_inspector(manager, host="0.0.0.0") as inspector:
        token = inspector.token
        assert token and len(token) >= 20 and inspector.url.endswith(f"/?token={token}")
        base = f"http://127.0.0.1:{inspector.port}/"
        for path in ("", "inspector.js", "chart.svg", "api/snapshot", "api/events"):
            assert (await get(base + path))[0] == 401, path
            assert (await get(base + path + "?token=wrong"))[0] == 401, path
        assert (await get(base + "api/snapshot?token=" + token))[0] == 200
        headers = {"Authorization": f"Bearer {token}"}
        assert (await get(base + "api/snapshot", headers=headers))[0] == 200
    async with await serve_inspector(manager, token="chosen") as inspector:
        assert inspector.url.endswith("/?token=chosen")  # a token can be asked for on loopback


async def test_on_loopback_a_foreign_host_name_is_refused(manager: LifecycleManager) -> None:
    # A page on another site that resolves its own name to 127.0.0.1 (DNS rebinding).
    async with await serve_inspector(manager) as inspector:
        status, _ = await get(inspector.url, headers={"Host": f"evil.example:{inspector.port}"})
        assert status == 403
        assert (await get(inspector.url, headers={"Host": f"localhost:{inspector.port}"}))[0] == 200


async def test_rows_stay_after_removal_and_the_source_protocol_holds(
    manager: LifecycleManager, driver: RoomDriver
) -> None:
    source = ManagerSource(manager)
    assert isinstance(source, Source)
    inspector = await Inspector.start(source, removed_limit=1)
    try:
        for key in ("a", "b"):
            driver.connect(key, active=True)
            driver.disconnect(key)  # into grace; the shutdown below removes them
        await manager.aclose()
        assert await eventually(
            lambda: [(r["key"], r["state"]) for r in inspector.rows()] == [("b", "removed")],
            timeout=WAIT,
        ), inspector.rows()
    finally:
        await inspector.aclose()
    assert not manager._notifier.listeners.by_name[
        "state_changed"
    ]  # the source let go of the manager


async def test_the_default_chart_is_shown_without_graphviz(
    manager: LifecycleManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PATH with no `dot` on it: a machine without Graphviz.
    monkeypatch.setenv("PATH", str(tmp_path))
    async with await serve_inspector(manager) as inspector:
        status, svg = await get(inspector.url + "chart.svg")
        assert status == 200 and svg.startswith("<svg")
        assert all(f"<title>{state.value}</title>" in svg for state in State)
    # Any other chart is laid out when the inspector starts, and needs Graphviz.
    other = dataclasses.replace(PARTICIPANT_CHART, name="other")
    inspector = await Inspector.start(ManagerSource(manager), chart=other)
    try:
        status, text = await get(inspector.url + "chart.svg")
        assert status == 503 and "Graphviz" in text
        status, text = await get(inspector.url + "api/snapshot")
        assert "Graphviz" in json.loads(text)["svg_error"]
    finally:
        await inspector.aclose()


# ------------------------------------------------------------------------- access and load


class QueueSource:
    """A source of the test's own (the Source protocol is ours): what the test puts in
    ``queue`` reaches the page; an exception put there ends ``changes()`` with it, and while
    ``down`` is set, ``snapshot()`` fails as a store in an outage does."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change | Exception] = asyncio.Queue()
        self.rows: dict[str, dict[str, dict[str, Any]]] = {}
        self.down: Exception | None = None

    @property
    def description(self) -> str:
        return "a queue"

    async def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self.down is not None:
            raise self.down
        return self.rows

    async def changes(self) -> AsyncIterator[Change]:
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield item

    async def aclose(self) -> None:
        pass


def big_row(key: str, size: int = 8000) -> dict[str, Any]:
    return {"key": key, "state": "active", "identity": "x" * size, "history": []}


async def _raw(port: int, request: bytes) -> bytes:
    """``request`` sent as is on a socket; the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()


async def _stalled_client(port: int, path: str) -> socket.socket:
    """A client that sends ``GET path`` and never reads (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


async def test_an_empty_token_is_no_token(manager: LifecycleManager) -> None:
    # `--token "$UNSET"` off loopback must not serve everything to everyone.
    async with await serve_inspector(manager, host="0.0.0.0", token="") as inspector:
        assert inspector.token and len(inspector.token) >= 20
        base = f"http://127.0.0.1:{inspector.port}/"
        assert (await get(base + "api/snapshot"))[0] == 401
        assert (await get(base + "api/snapshot?token="))[0] == 401
        assert (await get(base + "api/snapshot", headers={"Authorization": "Bearer "}))[0] == 401
        assert (await get(base + f"api/snapshot?token={inspector.token}"))[0] == 200
    async with await serve_inspector(manager, token="") as inspector:  # on loopback: none
        assert inspector.token is None and "token" not in inspector.url
        assert (await get(inspector.url + "api/snapshot"))[0] == 200


async def test_undecodable_authorization_bytes_are_a_401(manager: LifecycleManager) -> None:
    async with await serve_inspector(manager, token="chosen") as inspector:
        for header in (b"Bearer \xff\xfe\x80", b"\xc3\x28", b"Bearer chosen\xff"):
            answer = await _raw(
                inspector.port,
                b"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                + header
                + b"\r\nConnection: close\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        answer = await _raw(
            inspector.port,
            b"GET /api/snapshot?token=%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]


async def test_every_answer_carries_the_security_headers(manager: LifecycleManager) -> None:
    async with await serve_inspector(manager) as inspector, aiohttp.ClientSession() as http:
        for path in ("", "chart.svg", "api/snapshot"):
            async with http.head(inspector.url + path) as response:  # headers, no body
                assert response.status == 200 and await response.read() == b""
                assert int(response.headers["Content-Length"]) > 0
                assert response.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(inspector.url + "api/events") as response:
            assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert response.headers["Cache-Control"] == "no-store"


async def test_a_page_that_never_reads_is_dropped() -> None:
    source = QueueSource()
    inspector = await Inspector.start(source, write_timeout=0.5)
    try:
        with await _stalled_client(inspector.port, "/api/events") as sock:
            assert sock.fileno() >= 0
            assert await eventually(lambda: inspector.viewers == 1, timeout=WAIT)
            # Far more than the sockets' buffers hold: the server's writes block.
            for n in range(4000):
                source.queue.put_nowait(Change("room", {**big_row("alice"), "cleanups": n}))
                if n % 50 == 0:
                    await asyncio.sleep(0)
            # Dropped after the write timeout: no handler left waiting on it.
            assert await eventually(lambda: inspector.viewers == 0, timeout=WAIT)
            assert inspector.dropped == 1
        # A page that reads is served as before.
        async with (
            aiohttp.ClientSession() as http,
            http.get(inspector.url + "api/events") as response,
        ):
            event, snapshot = await next_event(response)
            assert event == "snapshot" and [r["cleanups"] for r in snapshot["rows"]] == [3999]
    finally:
        await inspector.aclose()


async def test_a_client_that_never_reads_a_large_answer_is_dropped() -> None:
    source = QueueSource()
    source.rows = {"room": {f"k{n}": big_row(f"k{n}") for n in range(1500)}}  # ~12 MB of JSON
    inspector = await Inspector.start(source, write_timeout=0.5)
    try:
        with await _stalled_client(inspector.port, "/api/snapshot"):
            assert await eventually(lambda: inspector.dropped == 1, timeout=WAIT)
        status, _ = await get(inspector.url + "chart.svg")
        assert status == 200
    finally:
        await inspector.aclose()


async def test_a_failing_source_is_shown_retried_and_never_raised_on_close() -> None:
    source = QueueSource()
    source.down = ConnectionError("the store is down")
    inspector = await Inspector.start(source)  # starts anyway, and says why it is empty
    try:
        assert inspector.problem == "ConnectionError: the store is down"
        async with (
            aiohttp.ClientSession() as http,
            http.get(inspector.url + "api/events") as response,
        ):
            event, snapshot = await next_event(response)
            assert snapshot["problem"] == "ConnectionError: the store is down"
            source.rows = {"room": {"alice": big_row("alice", 10)}}
            source.down = None  # the store answers again: the page catches up
            event, status = await next_event(response)
            assert (event, status["problem"]) == ("status", "")
            event, change = await next_event(response)
            assert event == "change" and change["row"]["key"] == "alice"
            # A poll fails (changes() ends with the error) while the store is down again.
            source.down = ConnectionError("down again")
            source.queue.put_nowait(ConnectionError("poll failed"))
            event, status = await next_event(response)
            assert (event, status["problem"]) == ("status", "ConnectionError: poll failed")
            source.rows = {}  # alice left during the outage
            source.down = None
            seen = []
            while ("change", "removed") not in seen:
                event, payload = await next_event(response)
                seen.append((event, payload.get("row", {}).get("state") or payload["problem"]))
            assert ("status", "") in seen or inspector.problem == ""
        source.down = ConnectionError("still down")
        source.queue.put_nowait(RuntimeError("a poll's error"))
        assert await eventually(
            lambda: inspector.problem == "ConnectionError: still down", timeout=WAIT
        )
    finally:
        await inspector.aclose()  # must not raise what went wrong before


INSPECT = [sys.executable, "-m", "livekit_lifecycle", "inspect"]


def test_inspect_prints_the_token_it_generates() -> None:
    command = subprocess.Popen(
        [*INSPECT, "--store", "memory://", "--web", "--host", "0.0.0.0", "--token", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert command.stdout is not None
        line = command.stdout.readline()
        assert line.startswith("inspector: http://0.0.0.0:"), line
        token = line.split("?token=", 1)[1].split()[0]
        assert len(token) >= 20
    finally:
        command.send_signal(signal.SIGINT)
        assert command.wait(timeout=WAIT) == 0, command.stderr.read() if command.stderr else ""


def test_inspect_command_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect"]) == 2
    assert "--web" in capsys.readouterr().err
    assert main(["inspect", "--web"]) == 2
    assert "--room" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the page


async def _row_state(page: Page, key: str) -> str | None:
    return await page.get_attribute(f'tr[data-key="{key}"]', "data-state")


async def _highlighted(page: Page) -> list[str]:
    return list(
        await page.eval_on_selector_all(
            "#svg g.node.lc-current title", "nodes => nodes.map(n => n.textContent)"
        )
    )


async def _until(page: Page, key: str, state: str) -> None:
    await page.wait_for_selector(f'tr[data-key="{key}"][data-state="{state}"]', timeout=WAIT * 1000)
    await page.wait_for_function(
        "state => [...document.querySelectorAll('#svg g.node.lc-current title')]"
        ".map(n => n.textContent).join() === state",
        arg=state,
        timeout=WAIT * 1000,
    )


@pytest.mark.browser
async def test_the_page_follows_a_refresh_live(
    chromium: Browser, manager: LifecycleManager, driver: RoomDriver, tmp_path: Path
) -> None:
    async with await serve_inspector(manager) as inspector:
        page = await chromium.new_page(viewport={"width": 1400, "height": 900})
        console = ConsoleLog.attach(page)
        await page.goto(inspector.url)
        await page.wait_for_selector("#status.live", timeout=WAIT * 1000)
        assert await page.is_visible("#empty")

        driver.connect("alice", active=True)
        manager.set_user_id("alice", "user-4e3e")
        await _until(page, "alice", "active")
        row = 'tr[data-key="alice"]'
        assert await page.inner_text(f"{row} .reconnects") == "0"

        driver.disconnect("alice")  # the page leaves: cleaned, then the grace window
        await _until(page, "alice", "grace")
        assert await page.inner_text(f"{row} .cleanups") == "1"
        assert "cleaned →hold→ grace" in await page.inner_text(f"{row} .history")

        driver.connect("alice", active=True)  # ...and comes back: same session
        await _until(page, "alice", "active")
        assert await page.inner_text(f"{row} .reconnects") == "1"
        assert "user-4e3e" in await page.inner_text(row)
        assert await _highlighted(page) == ["active"]
        assert await page.eval_on_selector_all("#svg g.edge.lc-last", "edges => edges.length") >= 1

        driver.connect("bob")  # a second row; selecting it moves the highlight
        await page.wait_for_selector('tr[data-key="bob"][data-state="connecting"]')
        await page.click('tr[data-key="bob"]')
        await _until(page, "bob", "connecting")
        assert await _row_state(page, "alice") == "active"
        await page.click('tr[data-key="alice"]')
        await _until(page, "alice", "active")

        await page.screenshot(path=str(tmp_path / "inspector.png"), full_page=True)
        assert (tmp_path / "inspector.png").stat().st_size > 10_000
        console.raise_for_errors()


async def test_demo_web_serves_the_demo_manager_and_waits_for_the_page() -> None:
    from livekit_lifecycle._demo import run_demo
    from livekit_lifecycle.inspector._demo import play_with_web

    printed = io.StringIO()
    demo_out = io.StringIO()
    seen: list[tuple[str, str]] = []

    async def viewer() -> None:
        assert await eventually(lambda: "inspector: http" in printed.getvalue(), timeout=WAIT)
        url = printed.getvalue().split("inspector: ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as http, http.get(url + "api/events") as response:
            while block := await response.content.readuntil(b"\n\n"):
                if block.startswith(b"event: change"):
                    row = json.loads(block.split(b"data: ", 1)[1])["row"]
                    seen.append((row["key"], row["state"]))

    watching = asyncio.ensure_future(viewer())
    code = await play_with_web(
        lambda serve: run_demo(grace_period=0.05, out=demo_out, on_manager=serve),
        out=printed,
        viewer_wait=WAIT,
        linger=False,
    )
    assert code == 0, demo_out.getvalue()
    await asyncio.wait_for(watching, WAIT)
    assert "the demo starts when the page is open" in printed.getvalue()
    assert {key for key, _ in seen} == {"alice", "bob", "carol", "dave", "erin"}
    assert ("alice", "grace") in seen and seen[-1][1] == "removed"
