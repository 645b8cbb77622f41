"""A real Redis Cluster of its own for a test: three masters on free loopback ports.

Each node is a :class:`~livekit_loopback.redis_server.RedisServer` started in
cluster mode (its cluster bus on a free port of its own too); the slots are
assigned with ``redis-cli --cluster create`` (Debian package ``redis-tools``),
and :meth:`RedisCluster.start` returns once every node reports
``cluster_state:ok``::

    async with RedisClusterServer(tmp_path) as cluster:
        store = RedisStore.from_url(cluster.url)   # redis+cluster://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from types import TracebackType

from .redis_server import RedisServer, RedisUnavailable, _inline_reply, free_ports

__all__ = ["RedisClusterServer", "find_redis_cli"]

_READY_TIMEOUT = 30.0


def find_redis_cli() -> str:
    """Path of ``redis-cli`` (``$REDIS_CLI`` first, then ``PATH`` and ``/usr/bin``)."""
    for candidate in (os.environ.get("REDIS_CLI"), shutil.which("redis-cli"), "/usr/bin/redis-cli"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RedisUnavailable("redis-cli not found (Debian: apt-get install redis-tools)")


class RedisClusterServer:
    """``masters`` redis-servers in cluster mode on ``127.0.0.1``, slots spread over them."""

    def __init__(self, directory: Path | str, *, masters: int = 3) -> None:
        self._directory = Path(directory)
        self._nodes: list[RedisServer] = []
        self._masters = masters

    @property
    def nodes(self) -> list[RedisServer]:
        return list(self._nodes)

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node (any node bootstraps a client)."""
        return f"redis+cluster://127.0.0.1:{self._nodes[0].port}"

    async def start(self) -> None:
        cli = find_redis_cli()
        try:
            # Every node's port and bus port picked at once: all distinct.
            ports = free_ports(2 * self._masters)
            for index in range(self._masters):
                node = RedisServer(
                    self._directory / f"node-{index}",
                    arguments=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--cluster-port",
                        str(ports[2 * index + 1]),
                    ],
                    port=ports[2 * index],
                )
                self._nodes.append(node)
                await node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self._nodes]
            create = await asyncio.create_subprocess_exec(
                cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(create.communicate(), _READY_TIMEOUT)
            if create.returncode != 0:
                raise RedisUnavailable(
                    f"redis-cli --cluster create failed: {output.decode(errors='replace')[-2000:]}"
                )
            deadline = asyncio.get_running_loop().time() + _READY_TIMEOUT
            for node in self._nodes:
                while not await _cluster_ok(node.port):
                    if asyncio.get_running_loop().time() > deadline:
                        raise RedisUnavailable(f"the cluster never became ok on {node.port}")
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for node in self._nodes:
            await node.stop()

    async def __aenter__(self) -> RedisClusterServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _cluster_ok(port: int) -> bool:
    reply = await _inline_reply(port, b"CLUSTER INFO")
    return reply is not None and b"cluster_state:ok" in reply
