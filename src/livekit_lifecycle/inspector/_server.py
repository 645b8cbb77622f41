"""The inspector's web server: one page, the chart's SVG, a JSON snapshot and an SSE stream."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from livekit_lifecycle.log import get_logger
from livekit_lifecycle.statechart import PARTICIPANT_CHART, Statechart

from ._source import Change, Source

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Inspector", "InspectorError"]

_CLIENT_QUEUE = 1000
"""Changes buffered per page; a page that falls further behind is dropped (it reconnects)."""
_HEARTBEAT = 15.0
_WRITE_TIMEOUT = 10.0
"""Seconds a write to one client may take; a client that reads no faster is dropped."""
_RETRY_FIRST = 0.5
_RETRY_MAX = 5.0
_CLOSE_TIMEOUT = 5.0
"""How long aclose() waits for the pump once cancelled (see aclose)."""
"""Backoff between attempts to read a source that failed (a store outage), in seconds."""
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class InspectorError(Exception):
    """The inspector cannot start as asked (missing aiohttp, no token off loopback...)."""


class Inspector:
    """A running inspector page for one :class:`Source`.

    Start it with :meth:`start` (or :func:`~livekit_lifecycle.inspector.serve_inspector`);
    ``url`` is the address to open (with the token, when there is one);
    :meth:`aclose` stops it. It keeps a row for every session it has seen,
    removed ones included (the latest ``removed_limit`` of those).
    """

    def __init__(
        self,
        source: Source,
        *,
        host: str,
        token: str | None,
        chart: Statechart,
        removed_limit: int,
        write_timeout: float,
    ) -> None:
        self.source = source
        self.host = host
        self.port = 0
        self.token = token
        self._chart = chart
        self._removed_limit = removed_limit
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._removed: dict[tuple[str, str], None] = {}
        """Keys of the rows of removed sessions, oldest first (at most ``removed_limit``)."""
        self._clients: set[asyncio.Queue[str | None]] = set()
        self._svg: str | None = None
        self._svg_error = ""
        self._runner: web.AppRunner | None = None
        self._pump: asyncio.Task[None] | None = None
        self._viewer = asyncio.Event()
        self._closed = False
        self._write_timeout = write_timeout
        self._streams = 0
        self._dropped = 0
        self._problem = ""
        """Why the source cannot be read now (a store outage), or "" when it can."""
        self._log = get_logger().bind(category="inspector")

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def start(
        cls,
        source: Source,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        chart: Statechart = PARTICIPANT_CHART,
        removed_limit: int = 100,
        write_timeout: float = _WRITE_TIMEOUT,
    ) -> Inspector:
        """Serve ``source`` on ``host:port`` (0: a free port).

        Binding anything but a loopback address requires a token: ``token``,
        or one generated here; every request must carry it (``?token=`` or
        ``Authorization: Bearer``), and :attr:`url` includes it. An empty
        ``token`` is no token (``--token "$UNSET"`` must not open the door).

        A client that takes longer than ``write_timeout`` seconds to accept
        one write (it stopped reading) is dropped, so a stalled page holds
        neither a handler nor more than a bounded buffer. When the source
        cannot be read (a store outage), the page says so and the rows stay
        as last seen; reading is retried with backoff and the page catches
        up when the source answers.

        Raises:
            InspectorError: aiohttp missing, or Graphviz's failure is not the cause.
            OSError: the address cannot be bound.
        """
        try:
            from aiohttp import web
        except ImportError:
            raise InspectorError(
                "the inspector needs aiohttp: pip install 'livekit-lifecycle[inspector]'"
            ) from None
        if not write_timeout > 0:
            raise ValueError(f"write_timeout must be > 0 seconds, got {write_timeout!r}")
        token = token or None
        if token is None and not _is_loopback(host):
            token = secrets.token_urlsafe(18)
        self = cls(
            source,
            host=host,
            token=token,
            chart=chart,
            removed_limit=removed_limit,
            write_timeout=write_timeout,
        )
        await self._render_chart()
        try:
            self._reconcile(await source.snapshot())
        except Exception as exc:  # the page starts anyway, and says why it is empty
            self._set_problem(exc)
        self._pump = asyncio.get_running_loop().create_task(
            self._follow(), name="livekit-lifecycle:inspector"
        )
        app = web.Application(middlewares=[self._guard])
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/", self._page)
        app.router.add_get("/inspector.js", self._static)
        app.router.add_get("/inspector.css", self._static)
        app.router.add_get("/chart.svg", self._chart_svg)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/events", self._events)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self.aclose()
            raise
        self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        """The page's address, token included when one is required."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    @property
    def viewers(self) -> int:
        """How many pages are connected to the live stream now."""
        return self._streams

    @property
    def dropped(self) -> int:
        """Clients dropped so far because a write to them timed out (they stopped reading)."""
        return self._dropped

    @property
    def problem(self) -> str:
        """Why the source cannot be read now (shown on the page), or ``""``."""
        return self._problem

    async def wait_for_viewer(self, timeout: float | None = None) -> bool:
        """Wait until a page has connected to the live stream; False on timeout."""
        try:
            await asyncio.wait_for(self._viewer.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop serving; the source is closed too. Never raises what went wrong before."""
        if self._closed:
            return
        self._closed = True
        for client in list(self._clients):
            _offer(client, None)
        try:
            await self.source.aclose()
        except Exception:
            self._log.exception("inspector.source_close_failed", source=self.source.description)
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            # Bounded: a store client may turn the cancellation of a call in flight
            # into its own error (redis-py does), which the pump takes for an outage;
            # it stops on `_closed` at its next turn. Whatever ended it was logged
            # then and is not the closer's to raise.
            done, _ = await asyncio.wait({pump}, timeout=_CLOSE_TIMEOUT)
            if pump in done:
                if not pump.cancelled():
                    pump.exception()
            else:
                self._log.warning("inspector.pump_stuck", source=self.source.description)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Inspector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- the model

    def rows(self) -> list[dict[str, Any]]:
        """Every session row, as the page gets it (``room`` added to each session dict)."""
        return list(self._rows.values())

    def _apply(self, change: Change) -> dict[str, Any]:
        row = {"room": change.room, **change.session}
        key = (change.room, change.key)
        self._rows.pop(key, None)  # re-inserted last, as the page orders them
        self._rows[key] = row
        self._removed.pop(key, None)
        if row.get("state") == "removed":
            self._removed[key] = None
            if len(self._removed) > self._removed_limit:
                oldest = next(iter(self._removed))
                del self._removed[oldest]
                del self._rows[oldest]
        return row

    def _reconcile(self, snapshot: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Make the rows what ``snapshot`` says: rows it no longer holds become ``removed``."""
        for (room, key), row in list(self._rows.items()):
            if row.get("state") != "removed" and key not in snapshot.get(room, {}):
                self._publish(Change(room, {**row, "state": "removed"}))
        for room, sessions in snapshot.items():
            for key, session in sessions.items():
                if self._rows.get((room, key)) != {"room": room, **session}:
                    self._publish(Change(room, session))

    def _publish(self, change: Change) -> None:
        row = self._apply(change)
        self._broadcast(
            "change",
            # The description too: a manager attached after the page opened names its room.
            {"row": row, "transition": change.transition, "source": self.source.description},
        )

    def _set_problem(self, exc: BaseException | None) -> None:
        problem = "" if exc is None else f"{type(exc).__name__}: {exc}"[:500]
        if problem == self._problem:
            return
        if exc is not None:
            self._log.warning(
                "inspector.source_unavailable", source=self.source.description, error=problem
            )
        else:
            self._log.info("inspector.source_recovered", source=self.source.description)
        self._problem = problem
        self._broadcast("status", {"problem": problem, "source": self.source.description})

    async def _follow(self) -> None:
        """Follow the source; through its failures (a store outage), retried with backoff."""
        delay = _RETRY_FIRST
        while not self._closed:
            if self._problem:
                try:
                    snapshot = await self.source.snapshot()
                except Exception as exc:
                    self._set_problem(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                self._set_problem(None)
                self._reconcile(snapshot)  # catch up on what changed while it could not be read
                delay = _RETRY_FIRST
            try:
                async for change in self.source.changes():
                    self._publish(change)
                return  # the source has ended (a room that went away)
            except Exception as exc:
                self._set_problem(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    def _broadcast(self, event: str, payload: dict[str, Any]) -> None:
        message = _sse(event, payload)
        for client in list(self._clients):
            if not _offer(client, message):
                self._clients.discard(client)  # too far behind: it reconnects afresh
                _offer(client, None, force=True)

    def _state(self) -> dict[str, Any]:
        return {
            "source": self.source.description,
            "states": [state.value for state in self._chart.states],
            "chart": self._chart.name,
            "svg_error": self._svg_error,
            "problem": self._problem,
            "rows": self.rows(),
            "time": time.time(),
        }

    async def _render_chart(self) -> None:
        from livekit_lifecycle.render import SVG_STAMP, GraphvizError, dot_digest, to_dot
        from livekit_lifecycle.render._graphviz import _graphviz

        dot_text = to_dot(self._chart)
        # The default chart ships laid out (static/chart.svg, a copy of
        # statecharts/participant.svg): no Graphviz needed to see it. Its stamp
        # says which DOT it was laid out from; any other chart is laid out here.
        text = _asset("chart.svg")
        if f"<!-- {SVG_STAMP}{dot_digest(dot_text)} -->" not in text:
            try:
                text = (await _in_thread(_graphviz, dot_text, "svg")).decode("utf-8")
            except GraphvizError as exc:
                self._svg_error = str(exc)
                return
        self._svg = text[text.find("<svg") :]  # inline: no XML prolog, no doctype

    # ---------------------------------------------------------------- HTTP

    @property
    def _guard(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.token is not None:
                given = request.query.get("token", "")
                auth = request.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    given = auth[len("Bearer ") :]
                if not _same_token(given, self.token):
                    return web.Response(status=401, text="a valid token is required\n")
            elif _is_loopback(self.host) and request.host.rsplit(":", 1)[0] not in _LOOPBACK_HOSTS:
                # A page elsewhere resolving its own name to 127.0.0.1 (DNS rebinding).
                return web.Response(status=403, text="unexpected Host header\n")
            response: web.StreamResponse = await handler(request)
            return response

        return guard

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, _asset("inspector.html"), "text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.path.lstrip("/")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return await self._send(request, _asset(name), kind)

    async def _chart_svg(self, request: web.Request) -> web.StreamResponse:
        if self._svg is None:
            return await self._send(request, self._svg_error + "\n", "text/plain", status=503)
        return await self._send(request, self._svg, "image/svg+xml")

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, _dumps(self._state()), "application/json")

    def _drop(self, request: web.Request) -> None:
        """Close a client's connection now, whatever is still buffered for it."""
        self._dropped += 1
        self._log.info("inspector.client_dropped", reason="write timeout", path=request.path)
        if request.transport is not None:
            request.transport.abort()

    async def _send(
        self, request: web.Request, text: str, content_type: str, *, status: int = 200
    ) -> web.StreamResponse:
        """``text`` as the response, each write bounded by the write timeout."""
        from aiohttp import web

        body = text.encode("utf-8")
        response = web.StreamResponse(status=status)
        response.content_type = content_type
        response.charset = "utf-8"
        response.content_length = len(body)
        try:
            await asyncio.wait_for(response.prepare(request), self._write_timeout)
            if request.method != "HEAD":  # the headers only, Content-Length included
                await asyncio.wait_for(response.write(body), self._write_timeout)
            await asyncio.wait_for(response.write_eof(), self._write_timeout)
        except asyncio.TimeoutError:
            self._drop(request)
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(_CLIENT_QUEUE)
        queue.put_nowait(_sse("snapshot", self._state()))
        self._clients.add(queue)
        self._streams += 1
        self._viewer.set()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), _HEARTBEAT)
                except asyncio.TimeoutError:
                    message = ": keep-alive\n\n"
                if message is None:
                    break
                # A page that stopped reading blocks this write once the socket's
                # buffers are full: bounded, then the page is dropped (its
                # browser reconnects afresh if it was only slow).
                await asyncio.wait_for(response.write(message.encode("utf-8")), self._write_timeout)
        except asyncio.TimeoutError:
            self._drop(request)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._clients.discard(queue)
            self._streams -= 1
        return response


async def _in_thread(fn: Callable[..., bytes], *args: Any) -> bytes:
    """``fn(*args)`` in a thread of its own that ends with it (laying out takes ~50 ms).

    Not the loop's default executor: its threads outlive the call, and an
    agent process should not gain a thread pool for a one-off.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def settle(result: bytes | None, exc: BaseException | None) -> None:
        if done.cancelled():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            assert result is not None
            done.set_result(result)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    thread = threading.Thread(target=work, name="livekit-lifecycle:graphviz", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        thread.join()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # On every response, the event stream included, before its headers are sent.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
    )


def _same_token(given: str, token: str) -> bool:
    """Whether ``given`` is the token; bytes that are not text (a bad header) never are."""
    try:
        given_bytes = given.encode("utf-8")
    except UnicodeEncodeError:  # aiohttp keeps undecodable header bytes as surrogates
        return False
    return hmac.compare_digest(given_bytes, token.encode("utf-8"))


def _offer(queue: asyncio.Queue[str | None], message: str | None, force: bool = False) -> bool:
    if force and queue.full():
        queue.get_nowait()
    try:
        queue.put_nowait(message)
    except asyncio.QueueFull:
        return False
    return True


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {_dumps(payload)}\n\n"


def _dumps(value: Any) -> str:
    # Session dicts are JSON-ready; default=str guards a source that is not.
    return json.dumps(value, default=str, separators=(",", ":"))


def _asset(name: str) -> str:
    static = resources.files(__package__).joinpath("static")
    return static.joinpath(name).read_text(encoding="utf-8")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
