"""Signalling transport: what a client's WebSocket upgrade asks for, and an ordered outbox.

Two protocol versions reach the server:

* ``/rtc/v1`` (single PeerConnection): the only query parameter is
  ``join_request``, a base64url ``WrappedJoinRequest`` holding a (possibly
  gzipped) ``JoinRequest`` with the client's publisher offer inside.
* ``/rtc`` (two PeerConnections, the SDK's default and its fallback when
  ``/rtc/v1`` answers 404): client info, ``reconnect`` and ``sid`` come as
  plain query parameters and the offer follows over the socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web
from google.protobuf.message import Message
from livekit.protocol import rtc as signal

from ._log import get_logger

__all__ = ["JoinParams", "JoinRequestError", "SignalConnection", "parse_join"]

_CLOSE_TIMEOUT = 2.0
OutMessage = TypeVar("OutMessage", bound=Message)


class JoinRequestError(ValueError):
    """The upgrade request does not carry a join request the server can read."""


@dataclass(frozen=True, slots=True)
class JoinParams:
    """What the client asked for when opening the signalling socket."""

    single_pc: bool
    reconnect: bool
    participant_sid: str
    client_protocol: int
    publisher_offer: signal.SessionDescription | None
    request: signal.JoinRequest | None
    """The decoded ``JoinRequest`` (``/rtc/v1`` only)."""
    auto_subscribe: bool = True
    """Forward every track published in the room unless the client asks otherwise."""


def parse_join(path: str, query: Mapping[str, str]) -> JoinParams:
    """Read the join parameters of a ``/rtc`` or ``/rtc/v1`` upgrade request.

    Raises:
        JoinRequestError: for a missing or undecodable ``join_request``.
    """
    if path.rstrip("/").endswith("/v1"):
        request = decode_join_request(query.get("join_request", ""))
        return JoinParams(
            single_pc=True,
            reconnect=request.reconnect,
            participant_sid=request.participant_sid,
            client_protocol=request.client_info.client_protocol,
            auto_subscribe=(
                request.connection_settings.auto_subscribe
                if request.HasField("connection_settings")
                else True
            ),
            publisher_offer=(
                request.publisher_offer if request.HasField("publisher_offer") else None
            ),
            request=request,
        )
    try:
        client_protocol = int(query.get("client_protocol", "0") or 0)
    except ValueError:
        client_protocol = 0
    return JoinParams(
        single_pc=False,
        reconnect=query.get("reconnect", "") in ("1", "true"),
        participant_sid=query.get("sid", ""),
        client_protocol=client_protocol,
        auto_subscribe=query.get("auto_subscribe", "1") not in ("0", "false"),
        publisher_offer=None,
        request=None,
    )


def decode_join_request(raw: str) -> signal.JoinRequest:
    """Decode the ``join_request`` query parameter of ``/rtc/v1``."""
    if not raw:
        raise JoinRequestError("/rtc/v1 needs a join_request query parameter")
    try:
        wrapped = signal.WrappedJoinRequest.FromString(
            base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True)
        )
        payload = wrapped.join_request
        if wrapped.compression == signal.WrappedJoinRequest.GZIP:
            payload = gzip.decompress(payload)
        return signal.JoinRequest.FromString(payload)
    except Exception as exc:
        # base64's binascii.Error, gzip's OSError/EOFError/zlib.error, and
        # protobuf's DecodeError (which has no stable import path).
        raise JoinRequestError(f"undecodable join_request: {type(exc).__name__}: {exc}") from None


class SignalConnection(Generic[OutMessage]):
    """One WebSocket with an ordered outbox: a client's signalling, or an agent worker's.

    :meth:`send` never blocks: messages queue and a writer task sends them
    in order, so room changes stay synchronous. :meth:`close` closes the
    socket once everything queued before it was sent; :meth:`abort` cuts the
    connection at once, like a network failure.
    """

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        label: str,
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
    ) -> None:
        self._request = request
        self.ws = ws
        self.label = label
        self._outbox: asyncio.Queue[OutMessage | None] = asyncio.Queue()
        self._closing = False
        self._log = get_logger().bind(connection=label)
        self._writer = spawn(self._write(), f"loopback-signal-writer:{label}")

    @property
    def closed(self) -> bool:
        return self._closing or self.ws.closed

    def send(self, message: OutMessage) -> None:
        if self.closed:
            return
        # SignalResponse and the agent protocol's ServerMessage both name their oneof "message".
        self._log.debug("signal.send", signal=message.WhichOneof("message"))
        self._outbox.put_nowait(message)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._outbox.put_nowait(None)

    def abort(self) -> None:
        self._closing = True
        self._outbox.put_nowait(None)
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the writer has stopped (after :meth:`close` or :meth:`abort`).

        Never raises, not even when the writer was cancelled by a server stop,
        and cancelling the wait leaves the writer running.
        """
        await asyncio.wait({self._writer})

    async def _write(self) -> None:
        try:
            while (message := await self._outbox.get()) is not None:
                if self.ws.closed:
                    break
                await self.ws.send_bytes(message.SerializeToString())
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away (reset, or the socket closed under us): what
            # was still queued can no longer be delivered.
            self._log.debug("signal.send_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._closing = True
            if not self.ws.closed:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                    await asyncio.wait_for(self.ws.close(), _CLOSE_TIMEOUT)
