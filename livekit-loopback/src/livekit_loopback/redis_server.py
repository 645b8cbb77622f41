"""A real ``redis-server`` of its own for a test: free loopback port, data in a temp dir.

Uses the system's ``redis-server`` (Debian package ``redis-server``); the
system service is neither needed nor touched. Readiness is checked with a
raw ``PING``, so this module needs no Redis client::

    async with RedisServer(tmp_path) as server:
        store = RedisStore.from_url(server.url)
        ...
        await server.kill()      # SIGKILL: an outage
        await server.start()     # the same port again, empty (nothing is saved)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisUnavailable", "find_redis_server", "free_port", "free_ports"]

_READY_TIMEOUT = 10.0


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` executable, or it would not start."""


def find_redis_server() -> str:
    """Path of ``redis-server`` (``$REDIS_SERVER`` first, then ``PATH`` and ``/usr/bin``)."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server")]
    candidates.append("/usr/bin/redis-server")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RedisUnavailable("redis-server not found (Debian: apt-get install redis-server)")


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1`` (see the module docstring)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        executable: str | None = None,
        arguments: Sequence[str] = (),
        port: int = 0,
    ) -> None:
        self._directory = Path(directory)
        self._executable = executable
        self._arguments = list(arguments)
        """More ``redis-server`` options (``--cluster-enabled yes``...)."""
        self._process: asyncio.subprocess.Process | None = None
        self._port = port
        """0 until started: then the kernel's pick (see :func:`free_ports`)."""

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the server (on its previous port after :meth:`kill`) and wait until it answers."""
        if self.running:
            return
        executable = self._executable or find_redis_server()
        self._directory.mkdir(parents=True, exist_ok=True)
        if not self._port:
            self._port = _free_port()
        log = self._directory / "redis.log"
        arguments = ["--port", str(self._port), "--bind", "127.0.0.1"]
        arguments += ["--dir", str(self._directory), "--logfile", str(log)]
        arguments += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        # DEBUG POPULATE builds the benchmarks' millions of unrelated keys.
        arguments += ["--enable-debug-command", "local", *self._arguments]
        self._process = await asyncio.create_subprocess_exec(
            executable,
            *arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while not await _answers(self._port):
            if self._process.returncode is not None or loop.time() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                await self.stop()
                raise RedisUnavailable(f"redis-server did not start on {self._port}: {tail}")
            await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL the server (no shutdown, no save): what a crash looks like to clients."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's pick)."""
    return _free_port()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, held together while picked: one
    probe at a time can be handed the same port twice (a cluster node's port and its bus
    port once were: the node never started)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _free_port() -> int:
    return free_ports(1)[0]


async def _answers(port: int) -> bool:
    reply = await _inline_reply(port, b"PING")
    return reply is not None and reply.startswith(b"+PONG")


async def _inline_reply(port: int, command: bytes) -> bytes | None:
    """The reply to one inline ``command`` sent to ``port`` on 127.0.0.1: a status line,
    or a bulk string's body; ``None`` when nothing answers within a second."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(command + b"\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 1.0)
        if not line.startswith(b"$"):
            return line
        return await asyncio.wait_for(reader.readexactly(int(line[1:]) + 2), 1.0)
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
