"""livekit-client (LiveKit's JavaScript SDK) in headless Chromium, as a participant of your tests.

A tiny page shipped with this package joins a LiveKit server with the pinned
``livekit-client`` from npm, publishes Chromium's fake microphone, and reports
what it sees on ``window.lk``. :class:`ClientPageServer` serves that page (and
the SDK bundle, from a local npm install: nothing comes from a CDN) and opens
it in a browser as a :class:`BrowserParticipant`::

    async with LoopbackServer() as server, headless_chromium() as browser:
        async with ClientPageServer(browser) as pages:
            alice = await pages.open(server.url, server.token("alice", "demo"))
            await alice.reload()                   # a browser refresh
            alice.console.raise_for_errors("removeTrack")

The SDK is installed once with npm (``python -m livekit_loopback.browser_client
install``, or :func:`install_livekit_client`) into ``.cache/npm-livekit-client`` (or
the folder ``$LIVEKIT_LIFECYCLE_LIVEKIT_CLIENT`` names). See ``docs/testing.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from livekit_loopback.browser import BrowserUnavailable, ConsoleLog

if TYPE_CHECKING:
    from aiohttp import web
    from playwright.async_api import Browser, Page, WebSocket

__all__ = [
    "DEFAULT_PREFIX",
    "LIVEKIT_CLIENT_ENV",
    "LIVEKIT_CLIENT_VERSION",
    "BrowserClientError",
    "BrowserParticipant",
    "ClientPageServer",
    "LivekitClientUnavailable",
    "find_livekit_client",
    "install_livekit_client",
]

LIVEKIT_CLIENT_VERSION = "2.23.0"
"""The livekit-client release the page is tested with (pinned in the shipped package.json)."""

LIVEKIT_CLIENT_ENV = "LIVEKIT_LIFECYCLE_LIVEKIT_CLIENT"
"""Environment variable naming the npm prefix folder livekit-client is installed in."""

DEFAULT_PREFIX = Path(".cache") / "npm-livekit-client"
"""Where livekit-client is installed unless told otherwise (relative to the working directory)."""

_BUNDLE = "livekit-client.umd.js"
_READY = "() => window.lk !== undefined && (window.lk.ready || window.lk.failure !== null)"
_SNAPSHOT = """() => ({
    version: lk.version, state: lk.state, ready: lk.ready, identity: lk.identity,
    sid: lk.sid, remote: {...lk.remote}, published: [...lk.published],
    subscribed: [...lk.subscribed], events: lk.events.map((e) => ({...e})), failure: lk.failure,
})"""


class LivekitClientUnavailable(BrowserUnavailable):
    """livekit-client is not installed where it was looked for (the message says how to fix it)."""


class BrowserClientError(RuntimeError):
    """The page's livekit-client failed (to connect, to publish...): the message is its error."""


def _data(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(name)))


def _prefix(prefix: str | os.PathLike[str] | None) -> Path:
    if prefix is not None:
        return Path(prefix)
    configured = os.environ.get(LIVEKIT_CLIENT_ENV)
    return Path(configured) if configured else DEFAULT_PREFIX


def _installed_version(prefix: Path) -> str | None:
    try:
        manifest = json.loads(
            (prefix / "node_modules" / "livekit-client" / "package.json").read_text()
        )
    except (OSError, ValueError):
        return None
    version = manifest.get("version")
    return version if isinstance(version, str) else None


def find_livekit_client(prefix: str | os.PathLike[str] | None = None) -> Path:
    """The ``dist`` folder of the pinned livekit-client installed under ``prefix``.

    ``prefix`` defaults to ``$LIVEKIT_LIFECYCLE_LIVEKIT_CLIENT``, else
    :data:`DEFAULT_PREFIX` in the working directory.

    Raises:
        LivekitClientUnavailable: when it is missing, or another version is installed there.
    """
    where = _prefix(prefix)
    version = _installed_version(where)
    dist = where / "node_modules" / "livekit-client" / "dist"
    if version == LIVEKIT_CLIENT_VERSION and (dist / _BUNDLE).is_file():
        return dist
    found = "nothing" if version is None else f"livekit-client {version}"
    raise LivekitClientUnavailable(
        f"livekit-client {LIVEKIT_CLIENT_VERSION} is not installed in {where} (found {found}):"
        f" run `python -m livekit_loopback.browser_client install --prefix {where}`"
        f" (needs npm), or set {LIVEKIT_CLIENT_ENV} to where it is installed"
    )


def install_livekit_client(
    prefix: str | os.PathLike[str] | None = None, *, npm: str = "npm"
) -> Path:
    """Install the pinned livekit-client under ``prefix`` with ``npm ci``; return its ``dist``.

    Copies the shipped ``package.json`` and ``package-lock.json`` into
    ``prefix`` and runs ``npm ci`` there (the lock pins every package and its
    checksum). Does nothing when that version is already installed.

    Raises:
        LivekitClientUnavailable: when npm is missing or fails.
    """
    where = _prefix(prefix)
    if _installed_version(where) == LIVEKIT_CLIENT_VERSION:
        return find_livekit_client(where)
    executable = shutil.which(npm)
    if executable is None:
        raise LivekitClientUnavailable(
            f"npm not found ({npm!r}): install Node.js and npm (apt-get install nodejs npm)"
        )
    where.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(_data(name), where / name)
    command = [executable, "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    completed = subprocess.run(
        [*command, "--loglevel=error"], cwd=where, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise LivekitClientUnavailable(
            f"`{' '.join(command)}` failed in {where} ({completed.returncode}):"
            f" {completed.stderr.strip() or completed.stdout.strip()}"
        )
    return find_livekit_client(where)


class BrowserParticipant:
    """One browser tab running the page: a LiveKit participant driven by livekit-client.

    Attributes:
        page: The Playwright page (use it for anything not covered here).
        console: Its console messages and uncaught errors, across reloads.
        signals: Every signalling message on its WebSockets, across reloads, as
            ``("sent" | "received", message)`` where message is the
            ``SignalRequest``/``SignalResponse`` case (``offer``, ``ping_req``,
            ``join``, ``pong_resp``...); ``?`` when it cannot be decoded.
        name: A label for artefacts.
    """

    def __init__(self, page: Page, name: str) -> None:
        self.page = page
        self.name = name
        self.console = ConsoleLog.attach(page)
        self.signals: list[tuple[str, str]] = []
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: self._record("sent", payload))
        ws.on("framereceived", lambda payload: self._record("received", payload))

    def _record(self, direction: str, payload: str | bytes) -> None:
        self.signals.append((direction, _signal_case(direction, payload)))

    def signalled(self, direction: str, message: str) -> int:
        """How many ``message``s went ``direction`` (``sent`` or ``received``) so far."""
        return sum(1 for entry in self.signals if entry == (direction, message))

    @property
    def closed(self) -> bool:
        return self.page.is_closed()

    async def wait_ready(self, timeout: float = 30.0) -> str:
        """Wait until the page has connected and published; return its participant sid.

        Raises:
            BrowserClientError: when livekit-client failed instead.
            playwright.async_api.TimeoutError: after ``timeout`` seconds.
        """
        await self.page.wait_for_function(_READY, timeout=timeout * 1000)
        state = await self.state()
        if state["failure"] is not None:
            raise BrowserClientError(f"{self.name}: {state['failure']}")
        return str(state["sid"])

    async def wait_for(self, predicate: str, timeout: float = 30.0) -> Any:
        """Wait until the JavaScript expression ``predicate`` (over ``lk``) is truthy; return it.

        Example: ``await alice.wait_for("!('agent' in lk.remote)")``.
        """
        handle = await self.page.wait_for_function(
            f"() => window.lk !== undefined && ({predicate})", timeout=timeout * 1000
        )
        return await handle.json_value()

    async def state(self) -> dict[str, Any]:
        """What the page's client sees now.

        Keys: ``version``, ``state`` (livekit-client's ConnectionState: ``connected``,
        ``reconnecting``, ``disconnected``...), ``ready``, ``identity``, ``sid``,
        ``remote`` (identity -> sid), ``published`` and ``subscribed`` (track sids),
        ``events`` (``{"name", "at", ...}`` in order) and ``failure``.
        """
        result: dict[str, Any] = await self.page.evaluate(_SNAPSHOT)
        return result

    async def reload(self, *, wait: bool = True, timeout: float = 30.0) -> str | None:
        """Reload the tab, like the user pressing F5; with ``wait``, return the new sid."""
        await self.page.reload(wait_until="load", timeout=timeout * 1000)
        return await self.wait_ready(timeout) if wait else None

    async def close(self) -> None:
        """Close the tab like a user does (its unload handlers run: livekit-client leaves)."""
        if self.page.is_closed():
            return
        async with self.page.expect_event("close"):
            await self.page.close(run_before_unload=True)

    async def crash(self, timeout: float = 30.0) -> None:
        """Crash the tab's renderer: no unload handler runs, so livekit-client sends no leave.

        What a killed browser or a pulled network cable looks like to the
        server: the signalling socket just closes, and the server waits its
        leave timeout for a resume that never comes. The tab stays open,
        showing the crash; open a new one to come back.
        """
        from playwright.async_api import Error as PlaywrightError

        crashed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_crash(_page: Page) -> None:
            if not crashed.done():
                crashed.set_result(None)

        self.page.once("crash", on_crash)
        with contextlib.suppress(PlaywrightError):
            # The navigation itself fails (the renderer is gone): expected.
            await self.page.goto("chrome://crash", timeout=timeout * 1000)
        await asyncio.wait_for(crashed, timeout)

    async def save_artifacts(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write a screenshot (if the tab is open), the console log and the page's events."""
        folder = Path(directory)
        console = folder / f"{self.name}.console.log"
        written = [_write(console, self.console.text())]
        if not self.page.is_closed():
            try:
                # Bytes, written here: Playwright writes a screenshot `path` from an
                # executor thread, which would outlive the test.
                shot = await self.page.screenshot(timeout=10_000)
                written.append(_write(folder / f"{self.name}.png", shot))
                state = json.dumps({**await self.state(), "signals": self.signals}, indent=1)
                written.append(_write(folder / f"{self.name}.state.json", state))
            except Exception as exc:  # a crashed or hung page must not hide the test's failure
                _write(console, f"{self.console.text()}\n[artefacts] {exc}")
        return written


def _signal_case(direction: str, payload: str | bytes) -> str:
    """The message case of one signalling frame (livekit-client sends protobuf, binary)."""
    if isinstance(payload, str):
        return "?"
    try:
        from livekit.protocol import rtc as signal

        kind = signal.SignalRequest if direction == "sent" else signal.SignalResponse
        return kind.FromString(payload).WhichOneof("message") or "?"
    except Exception:  # not installed, or not a signalling frame
        return "?"


def _site_files(dist: Path) -> dict[str, tuple[bytes, str]]:
    """Path -> (body, content type) of everything the page loads."""
    files = {
        "/": (_data("page.html"), "text/html"),
        "/client.js": (_data("client.js"), "text/javascript"),
        f"/{_BUNDLE}": (dist / _BUNDLE, "text/javascript"),
        f"/{_BUNDLE}.map": (dist / f"{_BUNDLE}.map", "application/json"),
    }
    return {
        route: (path.read_bytes(), kind) for route, (path, kind) in files.items() if path.is_file()
    }


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content + "\n")
    return path


class ClientPageServer:
    """Serves the test page and livekit-client over HTTP, and opens the page in a browser.

    Args:
        browser: The Playwright browser :meth:`open` uses (e.g. from
            :func:`~livekit_loopback.browser.headless_chromium`).
        livekit_client: npm prefix folder livekit-client is installed in
            (see :func:`find_livekit_client`).
        host: Address to listen on (``port`` 0 picks a free one).

    Raises:
        LivekitClientUnavailable: (from :meth:`start`) when livekit-client is not installed.
    """

    def __init__(
        self,
        browser: Browser | None = None,
        *,
        livekit_client: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._browser = browser
        self._prefix = livekit_client
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._base: str | None = None
        self.participants: list[BrowserParticipant] = []
        """Every tab :meth:`open` opened, in order."""

    @property
    def base_url(self) -> str:
        """``http://host:port/`` of the page (once started)."""
        if self._base is None:
            raise RuntimeError("the ClientPageServer is not started: use `async with` or start()")
        return self._base

    async def start(self) -> ClientPageServer:
        from aiohttp import web

        files = _site_files(find_livekit_client(self._prefix))

        async def serve(request: web.Request) -> web.Response:
            # From memory: aiohttp's FileResponse would start executor threads
            # that outlive the server (and trip thread-leak checks).
            body, content_type = files[request.path]
            return web.Response(body=body, content_type=content_type)

        app = web.Application()
        for route in files:
            app.router.add_get(route, serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        self._base = f"http://{self._host}:{port}/"
        return self

    async def stop(self) -> None:
        """Close every tab :meth:`open` opened, then stop serving. Idempotent."""
        for participant in self.participants:
            if not participant.closed:
                await participant.page.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ClientPageServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def url(
        self,
        livekit_url: str,
        token: str,
        *,
        publish: Sequence[str] = ("microphone",),
        auto_subscribe: bool = True,
        single_pc: bool = True,
        log_level: str = "warn",
    ) -> str:
        """The page's address for joining ``livekit_url`` with ``token``.

        Args:
            publish: Sources to publish once connected: ``"microphone"``
                (Chromium's fake one); ``()`` for none.
            auto_subscribe: livekit-client's ``autoSubscribe``.
            single_pc: livekit-client's ``singlePeerConnection`` (``/rtc/v1``);
                ``False`` uses ``/rtc`` with two PeerConnections.
            log_level: livekit-client's log level (``debug``, ``info``, ``warn``...).
        """
        unknown = sorted(set(publish) - {"microphone"})
        if unknown:
            raise ValueError(f"the page can publish 'microphone' only, not {unknown}")
        query = {
            "url": livekit_url,
            "token": token,
            "publish": ",".join(publish),
            "auto_subscribe": "1" if auto_subscribe else "0",
            "single_pc": "1" if single_pc else "0",
            "log": log_level,
        }
        return f"{self.base_url}?{urlencode(query)}"

    async def open(
        self,
        livekit_url: str,
        token: str,
        *,
        name: str | None = None,
        wait: bool = True,
        timeout: float = 30.0,
        **options: Any,
    ) -> BrowserParticipant:
        """Open the page in a new tab (its own browser context) and, with ``wait``, until ready.

        ``options`` are those of :meth:`url`. ``name`` labels artefacts; it
        defaults to ``tab<N>``.

        Raises:
            BrowserClientError: when ``wait`` and livekit-client failed to connect or publish.
        """
        if self._browser is None:
            raise RuntimeError("ClientPageServer(browser=...) is needed to open pages")
        page = await self._browser.new_page()
        participant = BrowserParticipant(page, name or f"tab{len(self.participants) + 1}")
        self.participants.append(participant)
        await page.goto(self.url(livekit_url, token, **options), timeout=timeout * 1000)
        if wait:
            await participant.wait_ready(timeout)
        return participant

    async def save_artifacts(self, directory: str | os.PathLike[str]) -> list[Path]:
        """:meth:`BrowserParticipant.save_artifacts` of every tab opened, into ``directory``."""
        written: list[Path] = []
        for participant in self.participants:
            written += await participant.save_artifacts(directory)
        return written
