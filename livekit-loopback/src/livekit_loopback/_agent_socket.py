"""The ``/agent`` WebSocket: one agent worker's connection, from the handshake to its close.

livekit-server's order: the upgrade needs a token granting ``video.agent``;
the worker's first message must be ``register`` and come within
``register_timeout`` seconds; the server's first message is the register
answer. Liveness is the WebSocket heartbeat (the SDK pings every 30 s; aiohttp
answers), so there is no application-level timeout after registration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from livekit.protocol import agent

from ._dispatch import AgentDispatcher, Worker
from ._log import get_logger
from ._signal import SignalConnection

__all__ = ["WorkerConnection", "serve_worker"]

WorkerConnection = SignalConnection[agent.ServerMessage]


async def serve_worker(
    ws: web.WebSocketResponse,
    link: WorkerConnection,
    dispatcher: AgentDispatcher,
    register_timeout: float,
) -> Worker | None:
    """Run one worker's socket until it closes; ``None`` when it never registered."""
    log = get_logger().bind(connection=link.label)
    try:
        first = await ws.receive(timeout=register_timeout)
    except asyncio.TimeoutError:
        log.warning("agent.register_timeout", timeout=register_timeout)
        return None
    request = _decode(first, log)
    if request is None or request.WhichOneof("message") != "register":
        log.warning(
            "agent.register_expected",
            got=None if request is None else request.WhichOneof("message"),
        )
        return None
    worker = dispatcher.register(link, request.register)
    try:
        async for frame in ws:
            message = _decode(frame, log)
            if message is None:
                continue
            try:
                dispatcher.handle(worker, message)
            except Exception:
                log.exception("agent.handler_failed", message=message.WhichOneof("message"))
    finally:
        dispatcher.worker_lost(worker)
    return worker


def _decode(frame: WSMessage, log: Any) -> agent.WorkerMessage | None:
    if frame.type != WSMsgType.BINARY:
        if frame.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            log.info("agent.frame_ignored", type=frame.type.name)
        return None
    try:
        return agent.WorkerMessage.FromString(frame.data)
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        log.warning("agent.undecodable", error=f"{type(exc).__name__}: {exc}")
        return None
