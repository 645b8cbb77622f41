"""Recovery: from SIGKILL of a worker to a new job holding the restored sessions (issue 22).

Usage::

    .venv/bin/python -m benchmarks.recovery                  # defaults, 5 runs per kind
    .venv/bin/python -m benchmarks.recovery --runs 3 --lease-ttl 3 --interval 0.5

Real parts only: a LoopbackServer with agent dispatch, a redis-server of its own,
real livekit-agents workers running ``benchmarks/_recovery_agent.py`` (a
``RedisStore`` and a model-less AgentSession, as a user writes them), and a
:class:`~livekit_lifecycle.watchdog.Watchdog` as a sidecar (its own process, this
module with ``--sidecar``) with its default dispatcher (livekit-api's
``AgentDispatchService``). Each run: alice joins a new room (its job goes to one
of two workers), bob joins and leaves (he is in his window), the store holds
both; then, at a random point of the lease's refresh period, the worker holding
the room is SIGKILLed (``worker`` runs) or only its job process (``job`` runs,
what the OOM killer does), and the clock runs until the job the watchdog
dispatched logged both sessions restored, and until its AgentSession started.
Times are wall-clock, from the jobs' own log lines and the sidecar's report
(same machine, same clock). A killed worker is replaced before the next run,
so a warm worker is always there, as in a fleet.

The watchdog's Redis cost is counted on its own client (a pipeline's commands
one by one), per poll: before any death, and between deaths (earlier dead
leases stay listed in ``ns:leases``). Then, in this process and without
workers, per poll with 1, 100 and 1,000 rooms of one dead process. Not a test:
it prints figures (medians and maxima).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from livekit_lifecycle.stores import RedisStore, SessionRecord, StoreWrite
from livekit_lifecycle.stores._redis import DEFAULT_LEASE_TTL
from livekit_lifecycle.watchdog import DEFAULT_INTERVAL, Watchdog, livekit_dispatcher
from livekit_loopback import LoopbackServer
from livekit_loopback.agent_worker import AgentWorker
from livekit_loopback.redis_server import RedisServer

from ._store import _Commands

AGENT = Path(__file__).resolve().parent / "_recovery_agent.py"
REPOSITORY = Path(__file__).resolve().parent.parent
WAIT = 60.0
Line = dict[str, Any]


def _at(line: Line) -> float:
    return datetime.fromisoformat(str(line["timestamp"])).timestamp()


@dataclass
class Run:
    kind: str
    lease_expired: float
    """Seconds from the kill to the dead lease's expiry (its score in Redis)."""
    dispatched: float
    restored: float
    """Seconds from the kill to the new job's last ``session.restored`` line."""
    ready: float
    """Seconds from the kill to the new job's AgentSession started (conversation given back)."""


class Sidecar:
    """The watchdog as a sidecar: its own process (this module with ``--sidecar``), so the
    benchmark's server and clients never delay it. It reports each dispatch (when it was
    called) and, after each poll, its counters, as JSON lines in a file."""

    def __init__(self, fleet: Fleet, interval: float) -> None:
        self.report = fleet.directory / "sidecar.jsonl"
        server = fleet.server
        self._command = [
            *(sys.executable, "-m", "benchmarks.recovery", "--sidecar", str(self.report)),
            *("--redis", fleet.redis.url, "--namespace", fleet.namespace),
            *("--url", server.url, "--api-key", server.api_key),
            *("--api-secret", server.api_secret, "--interval", str(interval)),
        ]
        self._process: asyncio.subprocess.Process | None = None
        self.phases: dict[str, list[float]] = {}
        self._mark = (0, 0)

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(*self._command, cwd=REPOSITORY)

    def lines(self) -> list[Line]:
        try:
            text = self.report.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def dispatched(self, room: str) -> float | None:
        return next((r["called"] for r in self.lines() if r.get("room") == room), None)

    def end(self, phase: str) -> None:
        """The phase since the previous call ends now: record its commands per poll."""
        counters = [r for r in self.lines() if "polls" in r]
        if not counters:
            return
        commands, polls = counters[-1]["commands"], counters[-1]["polls"]
        if polls > self._mark[1]:
            per_poll = (commands - self._mark[0]) / (polls - self._mark[1])
            self.phases.setdefault(phase, []).append(per_poll)
        self._mark = (commands, polls)

    async def stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


async def sidecar(args: argparse.Namespace, report: TextIO) -> None:
    """``--sidecar REPORT``: run a watchdog until killed, reporting to REPORT."""
    dispatch, close = livekit_dispatcher(
        url=args.url, api_key=args.api_key, api_secret=args.api_secret
    )

    async def timed(room: str, metadata: str) -> None:
        called = time.time()
        await dispatch(room, metadata)
        report.write(json.dumps({"room": room, "called": called, "rpc": time.time() - called}))
        report.write("\n")

    store = RedisStore.from_url(args.redis, namespace=args.namespace)
    sent = _Commands(store)
    watchdog = Watchdog(store, dispatch=timed, interval=args.interval, name="bench-sidecar")
    poll = watchdog.poll

    async def counted_poll() -> Any:
        done = await poll()
        counters = {"polls": watchdog.stats["polls"], "commands": sent.sent}
        report.write(json.dumps(counters) + "\n")
        return done

    watchdog.poll = counted_poll  # type: ignore[method-assign]
    try:
        await watchdog.run()
    finally:
        await close()
        await store.aclose()


class Fleet:
    def __init__(
        self, server: LoopbackServer, redis: RedisServer, directory: Path, lease_ttl: float | None
    ) -> None:
        self.server = server
        self.redis = redis
        self.directory = directory
        self.namespace = f"bench{uuid.uuid4().hex[:6]}"
        self.lease_ttl = lease_ttl
        self.lease_period = (DEFAULT_LEASE_TTL if lease_ttl is None else lease_ttl) / 3
        self.workers: dict[str, AgentWorker] = {}

    async def add_worker(self) -> None:
        env = {"BENCH_REDIS_URL": self.redis.url, "BENCH_NAMESPACE": self.namespace}
        if self.lease_ttl is not None:
            env["BENCH_LEASE_TTL"] = str(self.lease_ttl)
        worker = AgentWorker(
            AGENT,
            url=self.server.url,
            api_key=self.server.api_key,
            api_secret=self.server.api_secret,
            log_path=self.directory / f"worker-{len(self.workers) + 1}-{time.time_ns()}.log",
            env=env,
            drain_timeout=1,
        )
        await worker.start()
        worker_id = await worker.wait_registered(timeout=WAIT)
        self.workers[worker_id] = worker

    def lines(self, room: str, name: str) -> list[Line]:
        return [
            line
            for worker in self.workers.values()
            for line in worker.lines()
            if line.get("message") == name and line.get("room") == room
        ]

    async def until(self, what: str, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {WAIT} s")
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        for worker in self.workers.values():
            await worker.kill()


async def one_run(
    fleet: Fleet,
    kind: str,
    number: int,
    reader: RedisStore,
    costs: Sidecar,
) -> Run:
    server = fleet.server
    room = f"bench-{kind}-{number}"
    alice = await server.connect("alice", room)
    job = await server.wait_for_job(room, timeout=WAIT)
    assert job.worker_id is not None
    holder = fleet.workers[job.worker_id]

    def started() -> bool:
        return bool(fleet.lines(room, "bench.ready"))

    await fleet.until("the first job's AgentSession", started)
    job_pid = int(fleet.lines(room, "bench.ready")[0]["pid"])
    bob = await server.connect("bob", room)  # once the job is there: his connection is its own

    def bob_known() -> bool:
        return any(r.get("key") == "bob" for r in fleet.lines(room, "session.user_id_set"))

    await fleet.until("bob in the job", bob_known)
    await asyncio.wait_for(bob.disconnect(), WAIT)

    deadline = time.monotonic() + WAIT
    while True:
        info = await reader.read_room(room)
        states = {r.key: r.state for r in info.records}
        if states == {"alice": "active", "bob": "grace"} and info.owner_alive:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the store never held alice active and bob in grace: {states}")
        await asyncio.sleep(0.02)
    costs.end("before any death" if number == 0 and kind == "worker" else "between deaths")

    # The kill comes at any point of the lease's refresh period, as a crash does.
    await asyncio.sleep(random.uniform(0, fleet.lease_period))
    if kind == "worker":
        killed = time.time()
        await holder.kill()
    else:
        os.kill(job_pid, signal.SIGKILL)
        killed = time.time()

    def restored() -> bool:
        return any(int(r["pid"]) != job_pid for r in fleet.lines(room, "bench.ready"))

    await fleet.until("restored job", restored)
    costs.end("a dead room, until dispatched")
    [ready] = [r for r in fleet.lines(room, "bench.ready") if int(r["pid"]) != job_pid]
    new_pid = int(ready["pid"])
    restored_lines = [r for r in fleet.lines(room, "session.restored") if int(r["pid"]) == new_pid]
    assert len(restored_lines) == 2, restored_lines
    assert ready["sessions"] == 2
    # Read once the job is dead for sure: a refresh may land just before the kill.
    expiry = await reader.client.zscore(f"{fleet.namespace}:leases", info.owner)
    run = Run(
        kind,
        lease_expired=float(expiry) / 1000 - killed,
        dispatched=(costs.dispatched(room) or math.nan) - killed,
        restored=max(_at(r) for r in restored_lines) - killed,
        ready=_at(ready) - killed,
    )
    await asyncio.wait_for(alice.disconnect(), WAIT)
    await server.close_room(room)
    if kind == "worker":
        del fleet.workers[job.worker_id]
        await fleet.add_worker()
    return run


async def dead_room_cost(redis: RedisServer, rooms: int, interval: float) -> tuple[float, float]:
    """Commands per poll with ``rooms`` rooms of one dead process: before, then after dispatch."""
    namespace = f"cost{uuid.uuid4().hex[:6]}"
    dead = RedisStore.from_url(redis.url, namespace=namespace, lease_ttl=0.3)
    for start in range(0, rooms, 100):
        await dead.write(
            [
                StoreWrite(
                    f"room{n}",
                    "alice",
                    SessionRecord(
                        room=f"room{n}", key="alice", state="active", identity="alice", sid="PA_a"
                    ),
                    60.0,
                )
                for n in range(start, min(rooms, start + 100))
            ]
        )
    task = dead._lease_task
    assert task is not None
    task.cancel()  # SIGKILL: the lease is no longer refreshed
    await asyncio.sleep(0.5)

    async def dispatch(room: str, metadata: str) -> None:
        return None

    store = RedisStore.from_url(redis.url, namespace=namespace)
    sent = _Commands(store)
    watchdog = Watchdog(store, dispatch=dispatch, interval=interval)
    before = sent.sent
    found = await watchdog.poll()
    assert len(found) == rooms, len(found)
    first = sent.sent - before
    before = sent.sent
    assert await watchdog.poll() == []
    later = sent.sent - before
    await store.aclose()
    await dead.client.flushdb()
    await dead.aclose()
    return first, later


def _summary(values: Sequence[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


async def main(args: argparse.Namespace) -> None:
    lease_ttl = args.lease_ttl if args.lease_ttl is not None else DEFAULT_LEASE_TTL
    interval = args.interval if args.interval is not None else DEFAULT_INTERVAL
    print(
        f"recovery: lease_ttl {lease_ttl:g} s (lease refreshed every {lease_ttl / 3:.2f} s),"
        f" watchdog interval {interval:g} s, {args.runs} runs per kind",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        directory = Path(tmp)
        async with RedisServer(directory / "redis") as redis, LoopbackServer() as server:
            fleet = Fleet(server, redis, directory, args.lease_ttl)
            reader = RedisStore.from_url(redis.url, namespace=fleet.namespace)
            costs = Sidecar(fleet, interval)
            runs: list[Run] = []
            try:
                await fleet.add_worker()
                await fleet.add_worker()
                await costs.start()
                for kind in args.kinds:
                    for number in range(args.runs):
                        run = await one_run(fleet, kind, number, reader, costs)
                        runs.append(run)
                        print(
                            f"  {kind} run {number + 1}: lease expired +{run.lease_expired:.2f} s,"
                            f" dispatched +{run.dispatched:.2f} s, sessions restored"
                            f" +{run.restored:.2f} s, AgentSession started +{run.ready:.2f} s",
                            flush=True,
                        )
            finally:
                await costs.stop()
                await fleet.aclose()
                await reader.aclose()
            print()
            print(
                "| kill | lease expired | dispatched | sessions restored | AgentSession started |"
            )
            print(
                "|------|---------------|------------|-------------------|----------------------|"
            )
            for kind in args.kinds:
                mine = [r for r in runs if r.kind == kind]
                print(
                    f"| {kind} | {_summary([r.lease_expired for r in mine])}"
                    f" | {_summary([r.dispatched for r in mine])}"
                    f" | {_summary([r.restored for r in mine])}"
                    f" | {_summary([r.ready for r in mine])} |"
                )
            print(
                f"\nbound: lease_ttl + one job start = {lease_ttl:g} s + job start (the watchdog"
                f" wakes as a lease expires); the dead lease expires"
                f" {lease_ttl * 2 / 3:.2f}-{lease_ttl:.2f} s after the kill"
            )
            print("\nwatchdog commands per poll (the sidecar's client), by phase:")
            for phase, values in costs.phases.items():
                print(f"  {phase}: median {statistics.median(values):.1f}")
            print("\nwatchdog commands per poll, rooms of one dead process (no workers):")
            for rooms in args.dead_rooms:
                first, later = await dead_room_cost(redis, rooms, interval)
                print(
                    f"  {rooms:>5} dead rooms: {first:.0f} commands for the poll that dispatches"
                    f" them, then {later:.0f} per poll until they are taken over or expire"
                )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per kind of kill (default 5)")
    parser.add_argument(
        "--kind",
        dest="kinds",
        action="append",
        choices=("worker", "job"),
        help="what is killed (repeatable; default both)",
    )
    parser.add_argument("--lease-ttl", type=float, default=None, help="the agents' lease TTL")
    parser.add_argument("--interval", type=float, default=None, help="the watchdog's interval")
    parser.add_argument("--sidecar", metavar="REPORT", help=argparse.SUPPRESS)
    for name in ("--redis", "--namespace", "--url", "--api-key", "--api-secret"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dead-rooms",
        type=int,
        action="append",
        default=None,
        help="dead rooms for the cost rows (repeatable; default 1, 100, 1000)",
    )
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.kinds = args.kinds or ["worker", "job"]
    args.dead_rooms = args.dead_rooms or [1, 100, 1000]
    if args.sidecar and args.interval is None:
        args.interval = DEFAULT_INTERVAL
    if args.runs < 1 or any(
        not math.isfinite(v) for v in (args.lease_ttl or 1, args.interval or 1)
    ):
        raise SystemExit("--runs must be >= 1 and times finite")
    if args.sidecar:
        with open(args.sidecar, "a", buffering=1) as report:
            asyncio.run(sidecar(args, report))
    else:
        asyncio.run(main(args))
    return 0


if __name__ == "__main__":
    sys.exit(run())
