"""pytest fixtures for end-to-end tests of LiveKit agents against a :class:`LoopbackServer`.

Installing ``livekit-loopback`` registers this plugin (a ``pytest11`` entry
point): nothing to add to ``conftest.py`` (``-p no:livekit_loopback.pytest_plugin``
turns it off). The fixtures are async and work in pytest-asyncio's ``strict``
and ``auto`` modes, with a function-scoped event loop.

Fixtures:

``loopback_server``
    A running :class:`~livekit_loopback.LoopbackServer`,
    one per test. Configure it with the ``loopback`` marker, whose keyword
    arguments go to the server::

        @pytest.mark.loopback(leave_timeout=1.0)
        async def test_refresh(loopback_server):
            agent = await loopback_server.connect("agent", "room", kind="agent")
            ...

    At teardown the server stops (rooms made with ``connect`` are
    disconnected first) and the test fails if the server left a socket or a
    task behind. Where the server cannot work — aiortc is not installed, or
    the machine has no non-loopback network interface (libwebrtc ignores
    loopback) — the test is skipped with the reason, never left hanging.

``chromium``
    A headless Chromium (a Playwright ``Browser``, see
    :mod:`livekit_loopback.browser`), one per test. Mark such tests
    ``browser``. Without Playwright or a Chromium the test is skipped with the
    reason, unless ``LIVEKIT_LIFECYCLE_REQUIRE_BROWSER=1`` is set (CI sets it):
    then it fails, so a machine that lost its browser cannot pass by skipping.

``browser_client``
    A :class:`~livekit_loopback.browser_client.ClientPageServer` on
    the ``chromium`` browser: ``await browser_client.open(server.url, token)``
    opens a tab in which livekit-client joins the room and publishes the fake
    microphone. livekit-client is looked for in ``$LIVEKIT_LIFECYCLE_LIVEKIT_CLIENT``,
    else ``.cache/npm-livekit-client`` in the working directory or the pytest
    root; without it the test is skipped (fails under
    ``LIVEKIT_LIFECYCLE_REQUIRE_BROWSER=1``). When the test fails, every tab's
    screenshot, console log and events are saved under ``<tmp_path>/browser``.

``redis_server``
    A real ``redis-server`` of its own (a
    :class:`~livekit_loopback.redis_server.RedisServer`) on a free
    loopback port with its files in ``tmp_path``, stopped at teardown. Mark
    such tests ``redis``; ``@pytest.mark.redis(arguments=[...])`` adds
    ``redis-server`` options (``["--appendonly", "yes", "--appendfsync",
    "always"]``: a server that keeps every acknowledged write across
    :meth:`~livekit_loopback.redis_server.RedisServer.kill`). Without a
    ``redis-server`` the test is skipped with the reason, unless
    ``LIVEKIT_LIFECYCLE_REQUIRE_REDIS=1`` is set (CI sets it).

``redis_cluster``
    A real 3-master Redis Cluster of its own (a
    :class:`~livekit_loopback.redis_cluster.RedisClusterServer`: three
    ``redis-server`` in cluster mode on free loopback ports, slots assigned
    with ``redis-cli --cluster create``); ``.url`` is
    ``redis+cluster://127.0.0.1:PORT``. Skipped or failed like ``redis_server``.

``agent_worker``
    Starts your agent file as a real livekit-agents worker
    (:class:`~livekit_loopback.agent_worker.AgentWorker`: ``python agent.py
    start`` with the health server on port 0, load 0 and one idle job
    process)::

        async def test_ctrl_c(loopback_server, agent_worker):
            worker = await agent_worker("agent.py", loopback_server)
            await worker.wait_registered()
            ...
            assert await worker.stop(signal.SIGINT) == 0

    Give it a server (anything with ``url``, ``api_key`` and ``api_secret``)
    or ``url=``, ``api_key=``, ``api_secret=``; other keywords go to
    ``AgentWorker``. Each worker logs to ``<tmp_path>/worker-<n>.log``; workers
    still running at teardown are killed, and when the test failed each log's
    tail is added to the report (the files stay in ``tmp_path``). The agent
    file's environment needs livekit-agents; this package does not.

Missing system packages: a test skipped because redis-server, Chromium or
livekit-client (npm) is missing gets a short-summary line naming the
package, and the end of the run lists, in one section, what was skipped for
want of which package and the one command that installs them all.
:func:`skip_missing` does the same for your own optional packages (this
repository uses it for Graphviz).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from playwright.async_api import Browser

    from livekit_loopback import LoopbackServer

    from .agent_worker import AgentWorker
    from .browser_client import ClientPageServer
    from .redis_cluster import RedisClusterServer
    from .redis_server import RedisServer

__all__ = [
    "agent_worker",
    "CHROMIUM",
    "LIVEKIT_CLIENT",
    "REDIS_SERVER",
    "OptionalPackage",
    "browser_client",
    "chromium",
    "loopback_server",
    "pytest_configure",
    "pytest_runtest_makereport",
    "pytest_terminal_summary",
    "redis_cluster",
    "redis_server",
    "skip_missing",
]

_MARKER = "loopback"
REQUIRE_BROWSER_ENV = "LIVEKIT_LIFECYCLE_REQUIRE_BROWSER"
REQUIRE_REDIS_ENV = "LIVEKIT_LIFECYCLE_REQUIRE_REDIS"
_FAILED = pytest.StashKey[bool]()


@dataclass(frozen=True)
class OptionalPackage:
    """Something a test needs that a plain ``pip install`` does not bring."""

    name: str
    """As the user installs it (``redis-server``, ``chromium``...)."""
    apt: tuple[str, ...] = ()
    """The Debian packages that provide it."""
    then: str = ""
    """A command to run after those are installed (``{python}`` is this interpreter)."""
    require_env: str = ""
    """When this variable is ``1``, a missing package fails the test instead (CI sets it)."""


REDIS_SERVER = OptionalPackage("redis-server", ("redis-server",), require_env=REQUIRE_REDIS_ENV)
CHROMIUM = OptionalPackage("chromium", ("chromium",), require_env=REQUIRE_BROWSER_ENV)
LIVEKIT_CLIENT = OptionalPackage(
    "livekit-client (npm)",
    ("npm",),
    then="{python} -m livekit_loopback.browser_client install",
    require_env=REQUIRE_BROWSER_ENV,
)
_MISSING = pytest.StashKey[dict[OptionalPackage, list[str]]]()


def skip_missing(
    request: pytest.FixtureRequest, packages: Sequence[OptionalPackage], detail: str
) -> NoReturn:
    """Skip this test for want of ``packages``, or fail it where one's ``require_env`` is 1.

    The skip reason names the packages and is the same for every test skipped
    for them, so pytest's short summary shows one line per package; the end of
    the run lists them with the command that installs them.
    """
    names = ", ".join(package.name for package in packages)
    required = [
        p.require_env for p in packages if p.require_env and os.environ.get(p.require_env) == "1"
    ]
    if required:
        pytest.fail(f"{required[0]}=1 but this machine lacks {names}: {detail}")
    missing = request.config.stash.setdefault(_MISSING, {})
    for package in packages:
        missing.setdefault(package, []).append(request.node.nodeid)
    pytest.skip(f"needs {names}: {detail}")


def _python() -> str:
    """This interpreter as a user would type it: relative to the working directory if inside."""
    executable = Path(sys.executable)
    try:
        return shlex.quote(str(executable.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(executable))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: Any, exitstatus: int, config: pytest.Config
) -> Iterator[None]:
    """One section: what was skipped for want of which package, and the command to install them.

    Written after pytest's own summaries (the short one included), so it is the
    last thing before the counts.
    """
    yield
    missing = config.stash.get(_MISSING, {})
    if not missing:
        return
    terminalreporter.section("skipped for want of optional system packages", sep="=")
    for package, nodeids in missing.items():
        files = sorted({nodeid.split("::")[0] for nodeid in nodeids})
        count = len(set(nodeids))
        terminalreporter.write_line(
            f"{package.name}: {count} test{'' if count == 1 else 's'} skipped ({', '.join(files)})"
        )
    apt = sorted({name for package in missing for name in package.apt})
    steps = [f"sudo apt-get install -y {' '.join(apt)}"] if apt else []
    steps += [p.then.format(python=_python()) for p in missing if p.then]
    terminalreporter.write_line(f"to run them too: {' && '.join(dict.fromkeys(steps))}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): keyword arguments for the loopback_server fixture's"
        " LoopbackServer (leave_timeout=..., single_pc=...)",
    )
    config.addinivalue_line(
        "markers",
        "browser: drives a headless Chromium (the chromium fixture; the browser extra)",
    )
    config.addinivalue_line(
        "markers",
        "redis(arguments=[...]): runs against a real redis-server the redis_server fixture"
        " starts (with these redis-server options)",
    )


@pytest_asyncio.fixture
async def loopback_server(request: pytest.FixtureRequest) -> AsyncIterator[LoopbackServer]:
    """A running LoopbackServer for this test (see the module docstring)."""
    try:
        from livekit_loopback import LoopbackServer, LoopbackUnavailable
    except ImportError as exc:
        pytest.skip(f"LoopbackServer unavailable: {exc}")
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        options.update(marker.kwargs)
    server = LoopbackServer(**options)
    try:
        await server.start()
    except LoopbackUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        await server.stop()
    leaks = {
        "open signalling sockets": server.open_connections,
        "pending server tasks": server.pending_tasks,
    }
    left = {what: n for what, n in leaks.items() if n}
    if left:
        pytest.fail(f"the LoopbackServer left resources behind after stop(): {left}")


@pytest_asyncio.fixture
async def chromium(request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """A headless Chromium for this test (see the module docstring)."""
    from .browser import CHROMIUM_ENV, BrowserUnavailable, find_chromium, headless_chromium

    # Everything the test lacks, in one skip: a test of the browser client
    # needs livekit-client too, and should not name one package per run.
    missing: list[tuple[OptionalPackage, str]] = []
    if find_chromium() is None:
        missing.append((CHROMIUM, f"no Chromium on PATH (nor in ${CHROMIUM_ENV})"))
    if "browser_client" in request.fixturenames:
        from .browser_client import LivekitClientUnavailable, find_livekit_client

        try:
            find_livekit_client(_livekit_client_prefix(request))
        except LivekitClientUnavailable as exc:
            missing.append((LIVEKIT_CLIENT, str(exc)))
    if missing:
        skip_missing(request, [p for p, _ in missing], "; ".join(d for _, d in missing))
    try:
        async with headless_chromium() as browser:
            yield browser
    except BrowserUnavailable as exc:
        _browser_unavailable(str(exc))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember whether the test failed, for fixtures that keep artefacts of failures."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        item.stash[_FAILED] = True


def _browser_unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{REQUIRE_BROWSER_ENV}=1 but {reason}")
    pytest.skip(reason)


def _livekit_client_prefix(request: pytest.FixtureRequest) -> Path | None:
    """Where livekit-client is: the default (variable, working directory), else the pytest root."""
    from .browser_client import DEFAULT_PREFIX, LIVEKIT_CLIENT_ENV

    rooted = request.config.rootpath / DEFAULT_PREFIX
    if not os.environ.get(LIVEKIT_CLIENT_ENV) and not DEFAULT_PREFIX.exists() and rooted.exists():
        return rooted
    return None


@pytest_asyncio.fixture
async def browser_client(
    chromium: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ClientPageServer]:
    """The test page on ``chromium`` (see the module docstring)."""
    from .browser_client import ClientPageServer, LivekitClientUnavailable

    pages = ClientPageServer(chromium, livekit_client=_livekit_client_prefix(request))
    try:
        await pages.start()
    except LivekitClientUnavailable as exc:
        _browser_unavailable(str(exc))
    try:
        yield pages
    finally:
        if request.node.stash.get(_FAILED, False):
            written = await pages.save_artifacts(tmp_path / "browser")
            request.node.add_report_section(
                "teardown", "browser artefacts", "\n".join(str(path) for path in written)
            )
        await pages.stop()


_Redis = TypeVar("_Redis", "RedisServer", "RedisClusterServer")


@contextlib.asynccontextmanager
async def _running_redis(server: _Redis) -> AsyncIterator[_Redis]:
    """Start ``server`` for one test; a start that fails skips (fails under REQUIRE_REDIS)."""
    from .redis_server import RedisUnavailable

    try:
        await server.start()
    except RedisUnavailable as exc:
        if os.environ.get(REQUIRE_REDIS_ENV) == "1":
            pytest.fail(f"{REQUIRE_REDIS_ENV}=1 but {exc}")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def redis_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own (see the module docstring)."""
    from .redis_server import RedisServer, RedisUnavailable, find_redis_server

    try:
        find_redis_server()
    except RedisUnavailable as exc:
        skip_missing(request, [REDIS_SERVER], str(exc))
    arguments: list[str] = []
    for marker in request.node.iter_markers("redis"):
        arguments += marker.kwargs.get("arguments", ())
    async with _running_redis(RedisServer(tmp_path / "redis", arguments=arguments)) as server:
        yield server


@pytest_asyncio.fixture
async def redis_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RedisClusterServer]:
    """A 3-master Redis Cluster of this test's own (``redis-server`` and ``redis-cli``)."""
    from .redis_cluster import RedisClusterServer, find_redis_cli
    from .redis_server import RedisUnavailable, find_redis_server

    try:
        find_redis_server()
        find_redis_cli()
    except RedisUnavailable as exc:
        skip_missing(request, [REDIS_SERVER], str(exc))
    async with _running_redis(RedisClusterServer(tmp_path / "redis-cluster")) as cluster:
        yield cluster


@pytest_asyncio.fixture
async def agent_worker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[AgentWorker]]]:
    """Start agent files as real workers (see the module docstring)."""
    from .agent_worker import AgentWorker

    workers: list[AgentWorker] = []

    async def start(
        agent_file: str | os.PathLike[str],
        server: Any = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        **options: Any,
    ) -> AgentWorker:
        if server is not None:
            url, api_key, api_secret = server.url, server.api_key, server.api_secret
        if url is None or api_key is None or api_secret is None:
            raise TypeError("agent_worker() needs a server, or url=, api_key= and api_secret=")
        worker = AgentWorker(
            agent_file,
            url=url,
            api_key=api_key,
            api_secret=api_secret,
            log_path=tmp_path / f"worker-{len(workers) + 1}.log",
            **options,
        )
        workers.append(worker)
        await worker.start()
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            await worker.kill()
        if request.node.stash.get(_FAILED, False):
            for worker in workers:
                request.node.add_report_section("teardown", "agent worker log", worker.tail(200))
