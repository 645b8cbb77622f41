"""``python -m benchmarks._slow_proxy PORT DELAY``: a TCP proxy to 127.0.0.1:PORT that
delays everything the server sends by DELAY seconds (the ``store`` figure's slow Redis).

Prints ``listening <port>`` once ready; runs until terminated. Moves itself off
the CPU the benchmark is pinned to when the machine has another.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable


async def pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Callable[[], float]
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay()`` seconds late, until either ends.

    Also the fault-injection suite's proxy (tests/e2e/test_fault_injection.py), whose
    delay changes while it runs.
    """
    try:
        while chunk := await reader.read(65536):
            if seconds := delay():
                await asyncio.sleep(seconds)
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(upstream: int, delay: float) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(
            pipe(reader, up_writer, lambda: 0.0), pipe(up_reader, writer, lambda: delay)
        )

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        pinned = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - pinned
        if others:
            os.sched_setaffinity(0, others)
    asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2])))


if __name__ == "__main__":
    main()
