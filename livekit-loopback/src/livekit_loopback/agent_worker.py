"""Run a user's real livekit-agents worker (``python agent.py start``) from a test.

:class:`AgentWorker` starts the agent file in its own process, in ``start`` mode,
with the options a test machine needs and a production one does not:

- the health HTTP server on port 0 (``start`` binds 8081: two workers collide);
- load reported as 0 and no load threshold (a busy CI box would report itself
  full and get no job);
- a small pool of idle job processes (``start`` prewarms one per CPU, and
  registration waits for them).

Everything else is the user's file as they run it: its ``AgentServer``, its
entrypoint, its job processes. The options are applied by running the file
through a small launcher (``python -m livekit_loopback.agent_worker
agent.py start``) that wraps ``livekit.agents.cli.run_app`` for that one
call; the file must call ``cli.run_app(server)`` under its ``__main__`` guard,
as livekit-agents' own examples do.

The worker's output (its logs and its job processes' logs, JSON lines in
``start`` mode) goes to a log file, kept when a test fails; :meth:`AgentWorker.lines`
reads it back, which is how a test observes what happened inside a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["AgentWorker", "WorkerExited"]

_REGISTERED = "registered worker"
"""livekit-agents' log message once the server accepted the worker's registration."""

_ENV_IDLE = "LIVEKIT_LOOPBACK_WORKER_IDLE_PROCESSES"
_ENV_DRAIN = "LIVEKIT_LOOPBACK_WORKER_DRAIN_TIMEOUT"


class WorkerExited(RuntimeError):
    """The worker process ended before what was awaited happened."""


class AgentWorker:
    """A user's agent file running as a real livekit-agents worker process.

    ::

        async with AgentWorker("agent.py", url=url, api_key=key, api_secret=secret,
                               log_path=tmp_path / "worker.log") as worker:
            await worker.wait_registered()
            ...                                  # users join, jobs run
            code = await worker.stop(signal.SIGINT)   # Ctrl+C: drain, then exit

    Leaving the ``async with`` block kills a worker that is still running.
    """

    def __init__(
        self,
        agent_file: str | os.PathLike[str],
        *,
        url: str,
        api_key: str,
        api_secret: str,
        log_path: str | os.PathLike[str],
        idle_processes: int = 1,
        drain_timeout: int | None = None,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        """Prepare the worker; :meth:`start` (or ``async with``) starts it.

        Args:
            agent_file: The agent's file, run as ``python agent_file start``.
            url, api_key, api_secret: The server (``LIVEKIT_URL``... for the worker).
            log_path: Where the worker's stdout and stderr go.
            idle_processes: Job processes kept warm (``num_idle_processes``).
            drain_timeout: Seconds a Ctrl+C waits for running jobs before it
                shuts them down (``None``: the agent's own, 1 h by default).
            env: Extra environment variables for the worker and its jobs.
            args: Extra arguments after ``start`` (``--log-level DEBUG``...).
        """
        self.agent_file = Path(agent_file).resolve()
        if not self.agent_file.is_file():
            raise FileNotFoundError(f"no agent file at {self.agent_file}")
        if idle_processes < 0:
            raise ValueError(f"idle_processes must be >= 0, got {idle_processes}")
        if drain_timeout is not None and drain_timeout < 0:
            raise ValueError(f"drain_timeout must be >= 0, got {drain_timeout}")
        self.log_path = Path(log_path)
        self._env = {
            **os.environ,
            "LIVEKIT_URL": url,
            "LIVEKIT_API_KEY": api_key,
            "LIVEKIT_API_SECRET": api_secret,
            _ENV_IDLE: str(idle_processes),
            **(env or {}),
        }
        if drain_timeout is not None:
            self._env[_ENV_DRAIN] = str(drain_timeout)
        # Cloud-only settings of the caller's shell must not reach a local test worker.
        for name in ("LIVEKIT_WORKER_TOKEN", "LIVEKIT_AGENT_DEPLOYMENT"):
            self._env.pop(name, None)
        self._args = args
        self._process: asyncio.subprocess.Process | None = None
        self._log_file: Any = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        """The worker process's id, once started."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The worker's exit code once it exited (``-9`` when SIGKILLed), else ``None``."""
        return None if self._process is None else self._process.returncode

    async def start(self) -> None:
        """Start the worker process (it registers on its own: see :meth:`wait_registered`)."""
        if self._process is not None:
            raise RuntimeError("this AgentWorker was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(self.agent_file),
            "start",
            *self._args,
            cwd=self.agent_file.parent,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, as a container is: kill() ends the worker's job
            # processes and its forkserver with it, which a SIGKILL of the worker alone
            # leaves behind (idle, for ever, ~400 MB each).
            start_new_session=True,
        )

    async def wait_registered(self, timeout: float = 30.0) -> str:
        """Wait until the server accepted the worker; returns its worker id.

        Read from the worker's own log (``registered worker``), so it works with
        any server. Raises :class:`WorkerExited` if the worker exits first and
        ``TimeoutError`` after ``timeout`` seconds, both with the log's tail.
        """
        line = await self.wait_for_line(
            lambda record: record.get("message") == _REGISTERED, timeout=timeout
        )
        return str(line.get("id", ""))

    async def wait_for_line(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first JSON log line (worker or job) for which ``predicate`` is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        while True:
            for record in self.lines():
                if predicate(record):
                    return record
            if self.returncode is not None:
                raise WorkerExited(f"the worker exited ({self.returncode}) first\n{self.tail()}")
            if loop.time() >= deadline:
                raise TimeoutError(f"no such log line within {timeout}s\n{self.tail()}")
            await asyncio.sleep(delay)  # polling a file: there is nothing to wait on
            delay = min(delay * 2, 0.1)

    async def stop(self, sig: int = signal.SIGINT, *, timeout: float = 30.0) -> int:
        """Send ``sig`` to the worker and wait for it to exit; returns its exit code.

        ``SIGINT`` and ``SIGTERM`` drain (jobs end, their shutdown runs); a second
        one makes the worker exit at once; ``SIGKILL`` ends it with no shutdown.
        After ``timeout`` seconds the worker is killed and ``TimeoutError`` raised.
        """
        process = self._require_started()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise TimeoutError(
                f"the worker did not exit within {timeout}s of signal {sig}\n{self.tail()}"
            ) from None

    def signal(self, sig: int) -> None:
        """Send ``sig`` without waiting (a second Ctrl+C while the first drains)."""
        process = self._require_started()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL the worker if it still runs, and everything it started (its process
        group: job processes, the forkserver), and wait for the worker."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        # After stop(SIGKILL) too: the worker is gone, its children outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> AgentWorker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()

    # ------------------------------------------------------------------ the log

    def text(self) -> str:
        """Everything the worker (and its jobs) printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> Iterator[dict[str, Any]]:
        """Every JSON log line so far, parsed (other lines are skipped)."""
        for raw in self.text().splitlines():
            raw = raw.strip()
            if not raw.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict):
                    yield record

    def tail(self, count: int = 40) -> str:
        """The log's last ``count`` lines, for failure messages."""
        lines = self.text().splitlines()[-count:]
        return f"--- {self.log_path} (last {len(lines)} lines) ---\n" + "\n".join(lines)

    def _require_started(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError("the worker was not started")
        return self._process


# ---------------------------------------------------------------------- launcher


def _configure(server: Any) -> None:
    """Test options on the user's AgentServer (or legacy WorkerOptions), before it runs."""
    from livekit.agents import AgentServer

    idle = int(os.environ.get(_ENV_IDLE, "1"))
    drain = os.environ.get(_ENV_DRAIN)
    if isinstance(server, AgentServer):
        server.update_options(num_idle_processes=idle, load_threshold=math.inf)
        if drain is not None:
            server.update_options(drain_timeout=int(drain))
        server.load_fnc = _zero_load
        # No public option moves the health server off 8081 after construction.
        server._port = 0
    else:  # WorkerOptions, a plain dataclass
        server.num_idle_processes = idle
        server.load_threshold = math.inf
        if drain is not None:
            server.drain_timeout = int(drain)
        server.load_fnc = _zero_load
        server.port = 0


def _zero_load(*_: object) -> float:
    return 0.0


def _launch(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m livekit_loopback.agent_worker AGENT.py start")
    from livekit.agents import cli

    path = argv[0]
    run_app = cli.run_app

    def configured_run_app(server: Any) -> None:
        _configure(server)
        run_app(server)

    cli.run_app = configured_run_app
    sys.argv = [path, *argv[1:]]
    sys.path.insert(0, str(Path(path).resolve().parent))
    # As `python agent.py`: the file is __main__, so its job processes import it
    # again (as __mp_main__) exactly as they would in production.
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    _launch(sys.argv[1:])
