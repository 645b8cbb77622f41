"""The fault-injection suite: seeded, replayable runs of agents, users and Redis under faults.

Each run follows a plan drawn from one seed: users (real ``rtc.Room`` clients of the
LoopbackServer) join, leave and refresh; agent processes (``fault_agent.py``, a
LifecycleManager with a RedisStore each, up to two on the room at once) are started and
SIGKILLed at random points, mid-cleanup included; the real ``redis-server`` is killed and
restarted, frozen (SIGSTOP), slowed (a proxy delays its answers); corrupt records are put
in the room. Every agent reports each connection it sees go active and each cleanup it runs
(with the claim's fencing token, and whether it took the claim over), so the test holds the
history of every cleanup; a poller reads the room's records all along. At the end Redis is
healthy again, the users leave, a fresh agent restores the room, and the history is checked:

- every connection an agent saw is cleaned, and the callbacks run once: a second run is
  only ever a flagged takeover (``retry``, a higher token) of a run whose process was
  SIGKILLed before it finished (by the next process, or by a live manager that lost the
  claim and waited), or an unverified run during an outage (both documented in
  docs/stores.md); never two runs under one token, never a takeover from a live process.
  One exception, documented and counted, not hidden: a connection every observer of which
  died before the store held a word of it;
- nothing acknowledged is lost: a connection mark (``data["c:<sid>"]``) or ``user_id`` the
  store held once is held as long as the session lives (its grace window outlasts the run);
- a corrupt record is never a session.

The plan (the steps, their order, the pauses between them and what each hits) is a pure
function of the seed; the operating system's scheduling is not, so a seed replays the same
interleaving of steps, and the failure message prints the command that does it. CI runs
``ITERATIONS`` (default 1) run of ``STEPS`` steps; a long run sets
``LIVEKIT_LIFECYCLE_FAULT_ITERATIONS`` (and ``LIVEKIT_LIFECYCLE_FAULT_SEED`` to start from,
``LIVEKIT_LIFECYCLE_FAULT_STEPS`` per run). ``LIVEKIT_LIFECYCLE_FAULT_REPORT=path`` writes the
figures as JSON (docs/guarantees.md has those of a long run).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks._slow_proxy import pipe
from livekit import rtc

from livekit_lifecycle.stores import RedisStore
from livekit_loopback import LoopbackServer
from livekit_loopback.redis_server import RedisServer
from tests.stores.test_corrupt_records import CORRUPT, put_raw

pytestmark = [
    pytest.mark.e2e,
    # Every write acknowledged is on disk before the answer: a killed redis-server
    # restarts with it, so a lost write is the library's, not Redis's.
    pytest.mark.redis(arguments=["--appendonly", "yes", "--appendfsync", "always"]),
]

AGENT = Path(__file__).with_name("fault_agent.py")
SEED_ENV = "LIVEKIT_LIFECYCLE_FAULT_SEED"
ITERATIONS_ENV = "LIVEKIT_LIFECYCLE_FAULT_ITERATIONS"
STEPS_ENV = "LIVEKIT_LIFECYCLE_FAULT_STEPS"
REPORT_ENV = "LIVEKIT_LIFECYCLE_FAULT_REPORT"
DEFAULT_SEED = 17
"""CI's run: a plan with every kind of step (test_a_seed_is_one_plan checks it)."""
DEFAULT_STEPS = 24
USERS = ("ann", "ben", "cat", "dan")
LEASE = 3.0
"""The agents' lease TTL (s): how long a SIGKILLed agent's claims stay its own."""
MAX_AGENTS = 2
LOGGED = (
    "store.restore_deferred",
    "session.merged",
    "session.restored",
    "store.record_skipped",
    "cleanup.claim_unverified",
    "cleanup.claimed_elsewhere",
    "cleanup.claim_waiting",
    "cleanup.claim_taken_over",
    "cleanup.claim_wait_ended",
    "store.lease_lost",
)
"""Events counted in the agents' logs for the figures."""
START_WAIT = 30.0
SETTLE_WAIT = 40.0


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Step:
    action: str
    target: str = ""
    amount: float = 0.0
    pause: float = 0.0
    """Seconds to let pass before the next step (part of the interleaving)."""

    def __str__(self) -> str:
        target = f" {self.target}" if self.target else ""
        amount = f" {self.amount:.3f}" if self.amount else ""
        return f"{self.action}{target}{amount} +{self.pause:.3f}s"


def plan(seed: int, steps: int) -> list[Step]:
    """The steps of run ``seed``: drawn from the seed alone, against a model of the run."""
    rng = random.Random(seed)
    present: set[str] = set()
    agents: list[str] = []
    redis_down = False
    born = 0
    out: list[Step] = []

    def add(action: str, target: str = "", amount: float = 0.0) -> None:
        # An agent started while Redis is down is given time to pass its 3 s hold, at
        # times: it then works in memory and merges when Redis is back.
        longest = 4.5 if action == "start" and redis_down else 0.4
        out.append(Step(action, target, round(amount, 3), round(rng.uniform(0.0, longest), 3)))

    born += 1
    agents.append(f"a{born}")
    add("start", agents[-1])
    while len(out) < steps:
        choices: list[tuple[float, str]] = []
        if len(present) < len(USERS):
            choices.append((4.0, "join"))
        if present:
            choices += [(3.0, "leave"), (2.0, "refresh")]
        if agents:
            choices.append((1.5, "kill"))
        if len(agents) < MAX_AGENTS:
            choices.append((4.0 if not agents else 1.5, "start"))
        if redis_down:
            choices.append((2.0, "redis_start"))
        else:
            choices += [(0.5, "redis_kill"), (0.7, "redis_freeze"), (0.7, "redis_slow")]
            choices.append((0.5, "corrupt"))
        action = rng.choices([a for _, a in choices], [w for w, _ in choices])[0]
        if action == "join":
            user = rng.choice(sorted(set(USERS) - present))
            present.add(user)
            add("join", user)
        elif action in ("leave", "refresh"):
            user = rng.choice(sorted(present))
            if action == "leave":
                present.discard(user)
            add(action, user)
        elif action == "kill":
            victim = rng.choice(agents)
            agents.remove(victim)
            add("kill", victim)
        elif action == "start":
            born += 1
            agents.append(f"a{born}")
            add("start", agents[-1])
        elif action == "redis_kill":
            redis_down = True
            add("redis_kill")
        elif action == "redis_start":
            redis_down = False
            add("redis_start")
        elif action == "redis_freeze":
            add("redis_freeze", amount=rng.uniform(0.1, 0.8))
        elif action == "redis_slow":
            add("redis_slow", amount=rng.uniform(0.02, 0.2))
        else:
            add("corrupt", rng.choice(sorted(CORRUPT)))
    return out


# --------------------------------------------------------------------------- the parts


class LatencyProxy:
    """A TCP proxy to the redis-server that delays each answer by ``delay`` s (0: none).

    The agents talk to Redis through it, so "Redis slowed" is a real slow link.
    """

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            except OSError:
                return  # Redis is down: the client sees its connection closed
            try:
                await asyncio.gather(
                    pipe(reader, up_writer, lambda: 0.0),
                    pipe(up_reader, writer, lambda: self.delay),
                )
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._handlers.discard(me)


@dataclasses.dataclass
class Line:
    at: float
    agent: str
    words: list[str]


class AgentProcess:
    """One ``fault_agent.py`` process; every line it prints goes to the shared history."""

    def __init__(self, name: str, history: list[Line], log: Path) -> None:
        self.name = name
        self.history = history
        self.log = log
        """Where its stderr (the manager's structlog lines) goes."""
        self.process: asyncio.subprocess.Process | None = None
        self.killed_at: float | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, argv: list[str]) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(AGENT),
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        self._reader = asyncio.create_task(self._read())
        await until(lambda: self.said("ready"), f"{self.name} ready", START_WAIT)

    def said(self, *words: str) -> bool:
        n = len(words)
        return any(
            line.agent == self.name and line.words[:n] == list(words) for line in self.history
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            words = raw.decode(errors="replace").split()
            if words:
                self.history.append(Line(time.monotonic(), self.name, words))

    async def kill(self) -> None:
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.killed_at = time.monotonic()
        await self.process.wait()
        await self._drained()

    async def quit(self) -> None:
        """Graceful: ``quit`` on stdin, the manager's ``aclose()``; SIGKILL after a while."""
        assert self.process is not None and self.process.stdin is not None
        if self.alive:
            with contextlib.suppress(OSError):
                self.process.stdin.write(b"quit\n")
                await self.process.stdin.drain()
            try:
                await asyncio.wait_for(self.process.wait(), START_WAIT)
            except asyncio.TimeoutError:
                await self.kill()
        await self.process.wait()
        await self._drained()

    async def _drained(self) -> None:
        if self._reader is not None:
            await asyncio.wait_for(self._reader, START_WAIT)
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Acknowledged:
    """What the store held, read all along: a write seen once must stay while its session lives."""

    def __init__(self, store: RedisStore, room: str) -> None:
        self._store = store
        self._room = room
        self.marks: dict[str, set[str]] = {}
        self.user_ids: dict[str, str] = {}
        self.lost: list[str] = []
        self.reads = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        # The flag, not only the cancellation: redis-py can turn the cancellation of a
        # call in flight into an error of its own, which the loop takes for an outage
        # and polls on (two long runs hung for ever in this wait).
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while not self._stopping:
            try:
                records = await self._store.load(self._room, skipped=lambda _: None)
            except Exception:
                records = None  # Redis down or frozen: nothing to compare
            if records is not None:
                self.reads += 1
                self.compare({r.key: (r.user_id, r.data) for r in records})
            await asyncio.sleep(0.05)

    def compare(self, now: dict[str, tuple[str | None, dict[str, Any]]]) -> None:
        for key, marks in self.marks.items():
            user_id, data = now.get(key, (None, {}))
            missing = marks - set(data)
            if missing:
                self.lost.append(f"{key}: {sorted(missing)} acknowledged, then gone")
            if key in self.user_ids and user_id != self.user_ids[key]:
                self.lost.append(f"{key}: user_id {self.user_ids[key]!r} then {user_id!r}")
        for key, (user_id, data) in now.items():
            self.marks.setdefault(key, set()).update(k for k in data if k.startswith("c:"))
            if user_id is not None:
                self.user_ids.setdefault(key, user_id)


# --------------------------------------------------------------------------- one run


@dataclasses.dataclass
class Outcome:
    seed: int
    steps: list[Step]
    violations: list[str]
    figures: Counter[str]
    history: list[Line]
    logs: Path


class Run:
    """One seeded run: the plan's steps, then the settling, then the check."""

    def __init__(
        self, seed: int, steps: int, server: LoopbackServer, redis: RedisServer, logs: Path
    ) -> None:
        self.seed = seed
        self.logs = logs
        self.steps = plan(seed, steps)
        self.server = server
        self.redis = redis
        self.room = f"faults-{seed}-{uuid.uuid4().hex[:6]}"
        self.namespace = f"f{uuid.uuid4().hex[:8]}"
        self.history: list[Line] = []
        self.agents: dict[str, AgentProcess] = {}
        self.users: dict[str, rtc.Room] = {}
        self.corrupt: set[str] = set()
        self.figures: Counter[str] = Counter()
        self.proxy = LatencyProxy(redis.port)
        self.reader = RedisStore.from_url(redis.url, namespace=self.namespace, timeout=0.3)
        self.acknowledged = Acknowledged(self.reader, self.room)

    async def __call__(self) -> Outcome:
        await self.proxy.start()
        self.acknowledged.start()
        try:
            for step in self.steps:
                await self.do(step)
                self.figures[step.action] += 1
                await asyncio.sleep(step.pause)
            await self.settle()
        finally:
            await self.teardown()
        violations = self.check()
        return Outcome(self.seed, self.steps, violations, self.figures, self.history, self.logs)

    async def do(self, step: Step) -> None:
        if step.action == "start":
            await self.start_agent(step.target)
        elif step.action == "kill":
            await self.agents[step.target].kill()
        elif step.action == "join":
            self.users[step.target] = await self.server.connect(step.target, self.room)
        elif step.action == "leave":
            await self.users.pop(step.target).disconnect()
        elif step.action == "refresh":  # a browser reload: the old tab goes, the new comes
            await self.users.pop(step.target).disconnect()
            self.users[step.target] = await self.server.connect(step.target, self.room)
        elif step.action == "redis_kill":
            await self.redis.kill()
        elif step.action == "redis_start":
            await self.redis.start()
        elif step.action == "redis_freeze":
            with frozen(self.redis):
                await asyncio.sleep(step.amount)
        elif step.action == "redis_slow":
            self.proxy.delay = step.amount
            await asyncio.sleep(10 * step.amount)
            self.proxy.delay = 0.0
        elif step.action == "corrupt":
            text, _ = CORRUPT[step.target]
            key = f"corrupt-{step.target}"
            self.corrupt.add(key)
            await put_raw(self.reader, key, text.replace(f'"{step.target}"', f'"{key}"'), self.room)
        else:  # pragma: no cover - plan() draws only the actions above
            raise AssertionError(step.action)

    async def start_agent(self, name: str) -> None:
        agent = AgentProcess(name, self.history, self.logs / f"{self.seed}-{name}.log")
        self.agents[name] = agent
        proxied = f"redis://127.0.0.1:{self.proxy.port}/0"
        token = self.server.token(f"agent-{name}", self.room, kind="agent")
        await agent.start(
            [self.server.url, token, proxied, self.namespace, str(LEASE), str(self.seed)]
        )

    async def settle(self) -> None:
        """Redis healthy, everyone gone, a fresh agent restores the room; then wait until
        every connection seen was cleaned to the end."""
        if not self.redis.running:
            await self.redis.start()
        for user in list(self.users):
            await self.users.pop(user).disconnect()
        await self.start_agent("closer")
        with contextlib.suppress(TimeoutError):
            await until(lambda: not self.uncleaned(), "every connection cleaned", SETTLE_WAIT)
        await self.acknowledged.stop()
        self.acknowledged.compare(
            {r.key: (r.user_id, r.data) for r in await self.reader.load(self.room)}
        )

    def uncleaned(self) -> set[str]:
        seen = {line.words[2] for line in self.history if line.words[0] == "active"}
        done = {line.words[2] for line in self.history if line.words[0] == "cleaned"}
        return seen - done

    async def teardown(self) -> None:
        await self.acknowledged.stop()
        if not self.redis.running:
            await self.redis.start()
        for agent in self.agents.values():
            await agent.quit()
        for user in list(self.users):
            await self.users.pop(user).disconnect()
        await self.proxy.stop()
        await self.reader.aclose()

    def check(self) -> list[str]:
        """The history against the promises (see the module docstring)."""
        killed = {name: agent.killed_at for name, agent in self.agents.items()}
        violations = check_history(
            self.history,
            killed,
            self.acknowledged.marks,
            self.acknowledged.lost,
            self.corrupt,
            self.figures,
        )
        self.figures["sigkills"] += sum(at is not None for at in killed.values())
        self.figures["store_reads"] += self.acknowledged.reads
        for agent in self.agents.values():  # killed ones too: from their logs
            log = agent.log.read_text(errors="replace") if agent.log.exists() else ""
            for event in LOGGED:
                self.figures[event] += log.count(event)
        return violations


def check_history(
    history: list[Line],
    killed: dict[str, float | None],
    acknowledged: dict[str, set[str]],
    lost: list[str],
    corrupt: set[str],
    figures: Counter[str],
) -> list[str]:
    """Every violation of the promises in one run's ``history``: ``killed`` says when each
    agent was SIGKILLed (None: it was not), ``acknowledged`` each key's connection marks
    the store held, ``lost`` the acknowledged writes the store lost since."""
    violations = [f"lost: {what}" for what in dict.fromkeys(lost)]
    runs: dict[str, list[tuple[Line, bool]]] = {}
    for index, line in enumerate(history):
        if line.words[0] == "cleanup":
            sid = line.words[2]
            finished = any(
                later.agent == line.agent and later.words[:3] == ["cleaned", line.words[1], sid]
                for later in history[index:]
            )
            runs.setdefault(sid, []).append((line, finished))
    seen = {line.words[2]: line.words[1] for line in history if line.words[0] == "active"}
    for sid, key in seen.items():
        if key in corrupt:
            violations.append(f"corrupt record {key} became a session")
        these = runs.get(sid, [])
        if any(finished for _, finished in these):
            continue
        observers = {line.agent for line in history if line.words[:3] == ["active", key, sid]}
        held = f"c:{sid}" in acknowledged.get(key, set())
        if not held and all(killed[a] for a in observers):
            # Every process that saw it died before the store held a word of it (an
            # outage): nobody is left who knows it (docs/stores.md, not guaranteed).
            figures["lost_with_their_observers"] += 1
            continue
        last, _ = these[-1] if these else (None, False)
        how = "interrupted and never taken over" if these else "never cleaned"
        if last is not None and last.words[3] != "-" and killed[last.agent]:
            died = killed[last.agent] or 0.0
            if any(not killed[a] or (killed[a] or 0.0) > died for a in observers - {last.agent}):
                # Its claim's winner was SIGKILLed mid-cleanup while another manager on
                # the room, which lost the claim, lived: that one must have taken it over.
                # (Once a documented gap; docs/stores.md.)
                how = "interrupted beside a live manager that lost the claim, never taken over"
        violations.append(f"{key} {sid}: {how}")
    for sid, these in runs.items():
        figures["cleanup_runs"] += len(these)
        tokens = [line.words[3] for line, _ in these if line.words[3] != "-"]
        if len(tokens) != len(set(tokens)):
            violations.append(f"{sid}: two runs under one token {tokens}")
        for n, (line, _) in enumerate(these[1:], start=1):
            before = these[n - 1][0]
            unverified = "-" in (line.words[3], before.words[3])
            retry = line.words[4] == "1"
            figures["unverified_duplicates" if unverified else "takeovers"] += 1
            if unverified:
                continue  # an outage: documented as not coordinated
            dead = killed[before.agent]
            if not retry:
                violations.append(f"{sid}: cleaned twice ({before.agent}, {line.agent})")
            elif dead is None or dead > line.at:
                violations.append(f"{sid}: taken over from {before.agent}, still alive")
    figures["connections"] += len(seen)
    return violations


@contextlib.contextmanager
def frozen(redis: RedisServer) -> Iterator[None]:
    """SIGSTOP: the server keeps its connections and answers nothing until SIGCONT."""
    pid = redis.pid
    if pid is None:  # killed: nothing to freeze
        yield
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------- the test


def rerun(seed: int, steps: int) -> str:
    """The command that replays run ``seed`` alone (from the repository's root)."""
    here = Path(__file__).resolve().relative_to(Path(__file__).resolve().parents[2])
    return f"{SEED_ENV}={seed} {ITERATIONS_ENV}=1 {STEPS_ENV}={steps} pytest {here} -s"


async def test_seeded_faults_clean_every_connection_once_and_lose_nothing_acknowledged(
    loopback_server: LoopbackServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    first = int(os.environ.get(SEED_ENV, DEFAULT_SEED))
    iterations = int(os.environ.get(ITERATIONS_ENV, 1))
    steps = int(os.environ.get(STEPS_ENV, DEFAULT_STEPS))
    report_to = os.environ.get(REPORT_ENV)
    totals: Counter[str] = Counter()
    started = time.monotonic()
    failures: list[str] = []
    for seed in range(first, first + iterations):
        outcome = await Run(seed, steps, loopback_server, redis_server, tmp_path)()
        totals.update(outcome.figures)
        totals["runs"] += 1
        if outcome.violations:
            failures.append(describe(outcome, steps))
            totals["failed_runs"] += 1
        if report_to:  # after every run: a long run stopped half-way still has its figures
            write_report(
                report_to,
                json.dumps(
                    {
                        "first_seed": first,
                        "steps": steps,
                        "seconds": round(time.monotonic() - started, 1),
                        "figures": dict(sorted(totals.items())),
                        "failures": failures,
                    },
                    indent=1,
                ),
            )
    print(f"fault runs {first}..{first + iterations - 1}: {dict(sorted(totals.items()))}")
    assert not failures, "\n\n".join(failures)


def write_report(path: str, text: str) -> None:
    Path(path).write_text(text)


def describe(outcome: Outcome, steps: int) -> str:
    history = "\n".join(
        f"  {line.at:.3f} {line.agent}: {' '.join(line.words)}" for line in outcome.history
    )
    return (
        f"fault run seed {outcome.seed} failed:\n"
        + "\n".join(f"- {v}" for v in outcome.violations)
        + f"\nrerun: {rerun(outcome.seed, steps)}\nagents' logs: {outcome.logs}\nplan:\n"
        + "\n".join(f"  {n}. {step}" for n, step in enumerate(outcome.steps))
        + f"\nhistory:\n{history}"
    )


# --------------------------------------------------------------------------- the checker


def test_a_seed_is_one_plan() -> None:
    assert [str(s) for s in plan(7, 40)] == [str(s) for s in plan(7, 40)]
    assert plan(7, 40) != plan(8, 40)
    every = {"start", "kill", "join", "leave", "refresh", "corrupt"}
    every |= {"redis_kill", "redis_start", "redis_freeze", "redis_slow"}
    assert {step.action for step in plan(DEFAULT_SEED, DEFAULT_STEPS)} == every


def lines(*text: str) -> list[Line]:
    return [Line(float(n), t.split()[0], t.split()[1:]) for n, t in enumerate(text)]


def test_the_checker_catches_each_kind_of_violation() -> None:
    figures: Counter[str] = Counter()
    alive: dict[str, float | None] = {"a1": None, "a2": None}

    def check(history: list[Line], killed: dict[str, float | None] = alive) -> list[str]:
        return check_history(history, killed, {"ann": {"c:S1"}}, [], {"corrupt-x"}, figures)

    once = ("a1 active ann S1 u-ann", "a1 cleanup ann S1 1 0", "a1 cleaned ann S1")
    assert check(lines(*once)) == []
    assert check(lines(*once, "a2 cleanup ann S1 2 0", "a2 cleaned ann S1")) == [
        "S1: cleaned twice (a1, a2)"
    ]
    takeover = ("a2 cleanup ann S1 2 1", "a2 cleaned ann S1")
    assert check(lines(*once, *takeover)) == ["S1: taken over from a1, still alive"]
    assert check(lines(*once, *takeover), {"a1": 0.5, "a2": None}) == []  # a1 died first
    reused = check(lines(*once, "a2 cleanup ann S1 1 1"), {"a1": 0.5, "a2": None})
    assert reused == ["S1: two runs under one token ['1', '1']"]
    assert check(lines("a1 active ann S1 u-ann")) == ["ann S1: never cleaned"]
    interrupted = lines("a1 active ann S1 u-ann", "a1 cleanup ann S1 - 0")
    assert check(interrupted, {"a1": 9.0}) == ["ann S1: interrupted and never taken over"]
    assert check(lines("a1 active bob S2 u-bob"), {"a1": 9.0}) == []  # never acknowledged
    beside_text = ("a1 active ann S1 u-ann", "a2 active ann S1 u-ann", "a1 cleanup ann S1 1 0")
    beside = lines(*beside_text)
    assert check(beside, {"a1": 9.0, "a2": None}) == [
        "ann S1: interrupted beside a live manager that lost the claim, never taken over"
    ]
    assert check(beside, {"a1": 9.0, "a2": 5.0}) == ["ann S1: interrupted and never taken over"]
    taken = ("a2 cleanup ann S1 2 1", "a2 cleaned ann S1")
    assert check(lines(*beside_text, *taken), {"a1": 1.5, "a2": None}) == []
    assert check(
        lines("a1 active corrupt-x S3 -", "a1 cleanup corrupt-x S3 1 0", "a1 cleaned corrupt-x S3")
    ) == ["corrupt record corrupt-x became a session"]
    assert check_history([], alive, {}, ["ann: ['c:S1'] acknowledged, then gone"], set(), figures)


def test_a_lost_acknowledged_write_is_seen() -> None:
    acknowledged = Acknowledged.__new__(Acknowledged)
    acknowledged.marks, acknowledged.user_ids, acknowledged.lost = {}, {}, []
    acknowledged.compare({"ann": ("u-ann", {"c:S1": 1})})
    acknowledged.compare({"ann": ("u-ann", {"c:S1": 1, "c:S2": 1})})
    assert acknowledged.lost == []
    acknowledged.compare({"ann": ("u-ann", {"c:S2": 1})})
    acknowledged.compare({})
    assert acknowledged.lost == [
        "ann: ['c:S1'] acknowledged, then gone",
        "ann: ['c:S1', 'c:S2'] acknowledged, then gone",
        "ann: user_id 'u-ann' then None",
    ]
