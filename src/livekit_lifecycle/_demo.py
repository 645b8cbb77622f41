"""``livekit-lifecycle demo``: the seed's testing checklist, played on real ``rtc.Room`` objects.

By default the demo runs live (:mod:`livekit_lifecycle._demo_live`): an
embedded loopback LiveKit-compatible server, an agent-side Room with a
manager, and scripted users connecting as real SDK clients. With
``--offline`` (or automatically where the server cannot run: no ``testing``
extra, no non-loopback network interface) a
:class:`~livekit_lifecycle.testing.RoomDriver` feeds an unconnected Room the
RoomEvent protobufs a server would cause. Either way there is no credential
to set up; every transition is printed, each scenario ends with checks, and
the command exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from livekit import rtc

from ._demo_common import DemoManager, OnManager, Timeline
from .log import configure_logging
from .manager import LifecycleManager
from .statechart import State
from .testing import RoomDriver

__all__ = ["configure_parser", "run", "run_demo"]

_WAIT = 5.0
_MAX_GRACE = 60.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline",
        action="store_true",
        help="drive an unconnected rtc.Room instead of real connections to the embedded server",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="grace window (default: 2.0 live, 0.3 offline, so expiry is quick to watch)",
    )
    parser.add_argument(
        "--web",
        action="store_true",
        help="also serve the live statechart page of the demo's manager and print its URL",
    )
    parser.add_argument(
        "--worker",
        nargs="?",
        const="examples/voice_agent.py",
        default=None,
        metavar="AGENT_FILE",
        help="play the users against a real livekit-agents worker running AGENT_FILE"
        " (default: examples/voice_agent.py, models-free); slower: a worker starts",
    )
    parser.add_argument(
        "--logs",
        action="store_true",
        help="also print the library's structured logs (stderr)",
    )


def run(args: argparse.Namespace) -> int:
    if args.grace is not None and not 0 < args.grace <= _MAX_GRACE:  # NaN fails too
        print(
            f"livekit-lifecycle demo: --grace must be > 0 and at most {_MAX_GRACE:.0f} seconds"
            " (the scenarios wait for windows to expire)",
            file=sys.stderr,
        )
        return 2
    if args.logs:
        configure_logging(level="DEBUG")
    if args.worker is not None:
        return _play_worker(args.worker)
    if args.web:
        from .inspector._demo import play_with_web

        return asyncio.run(play_with_web(lambda serve: _play(args, serve)))
    return asyncio.run(_play(args))


def _play_worker(agent_file: str) -> int:
    from pathlib import Path

    from ._demo_worker import WorkerDemoUnavailable, run_worker_demo

    try:
        return asyncio.run(run_worker_demo(Path(agent_file)))
    except WorkerDemoUnavailable as exc:
        print(f"worker demo unavailable: {exc}", file=sys.stderr)
        return 2


async def _play(args: argparse.Namespace, on_manager: OnManager | None = None) -> int:
    if args.offline:
        return await run_demo(grace_period=args.grace or 0.3, on_manager=on_manager)
    from ._demo_live import LiveDemoUnavailable, run_live_demo

    try:
        return await run_live_demo(
            grace_period=args.grace or 2.0,
            live_table=sys.stdout.isatty(),
            on_manager=on_manager,
        )
    except LiveDemoUnavailable as exc:
        print(f"live demo unavailable ({exc}); running the offline demo instead", file=sys.stderr)
        return await run_demo(grace_period=args.grace or 0.3, on_manager=on_manager)


async def run_demo(
    grace_period: float = 0.3, out: TextIO | None = None, on_manager: OnManager | None = None
) -> int:
    """Play every scenario offline; return 0 when every check passed, 1 otherwise."""
    timeline = Timeline(out)
    timeline.title(
        f"livekit-lifecycle demo: a real rtc.Room driven through the SDK's event translation"
        f" (grace window {grace_period}s)"
    )
    async with RoomDriver("demo-room") as driver:
        demo = DemoManager(grace_period, timeline)
        manager, cleanups, seen = demo.manager, demo.cleanups, demo.seen
        if on_manager is not None:
            await on_manager(manager)
        manager.on("state_changed", timeline.transition)
        manager.attach(driver.room)
        for scenario in _SCENARIOS:
            timeline.heading(scenario.__doc__ or scenario.__name__)
            await scenario(driver, manager, timeline, cleanups)
        await _graceful_shutdown(driver, manager, timeline, cleanups)
    timeline.final_states(seen)
    return timeline.verdict()


async def _browser_refresh(
    driver: RoomDriver, manager: LifecycleManager, timeline: Timeline, cleanups: dict[str, int]
) -> None:
    """User refresh: the page leaves and comes back inside the window"""
    driver.connect("alice", active=True)
    driver.publish_track("alice")
    manager.set_user_id("alice", "user-4e3efa3d")
    driver.refresh("alice")
    session = await manager.wait_for("alice", State.ACTIVE, _WAIT)
    timeline.check("backend saw the disconnect and cleaned up once", cleanups.get("alice") == 1)
    timeline.check("user_id kept across the refresh", session.user_id == "user-4e3efa3d")
    timeline.check("stale track reference dropped", session.tracks == frozenset())
    timeline.check("session reconnected, not recreated", session.reconnects == 1)


async def _rapid_disconnects(
    driver: RoomDriver, manager: LifecycleManager, timeline: Timeline, cleanups: dict[str, int]
) -> None:
    """Multiple disconnects: the same user drops quickly, events delivered twice"""
    first = driver.connect("bob", active=True)
    driver.disconnect("bob")
    for _ in range(3):
        driver.redeliver_disconnect(first)
    driver.connect("bob", active=True)
    for _ in range(2):
        driver.refresh("bob")
    await manager.idle()
    session = await manager.wait_for("bob", State.ACTIVE, _WAIT)
    duplicates = manager.stats["ignored_duplicate"]
    timeline.line(f"bob    {duplicates} duplicate disconnect(s) ignored by guard")
    timeline.check("one cleanup per connection (3 connections ended)", cleanups.get("bob") == 3)
    timeline.check("duplicate disconnects were no-ops", duplicates >= 3)
    latest = driver.room.remote_participants["bob"].sid
    timeline.check("bob is active on his latest connection", session.sid == latest)


async def _window_expired(
    driver: RoomDriver, manager: LifecycleManager, timeline: Timeline, cleanups: dict[str, int]
) -> None:
    """Reconnection window: a user who comes back too late starts afresh"""
    driver.connect("carol", active=True)
    manager.set_user_id("carol", "user-7c1d")
    driver.disconnect("carol", rtc.DisconnectReason.CLIENT_INITIATED)
    await manager.wait_for("carol", State.REMOVED, _WAIT)
    driver.connect("carol", active=True)
    session = manager.get("carol")
    timeline.check("session removed after the window", cleanups.get("carol") == 1)
    timeline.check(
        "late reconnect gets a fresh session (no user_id)",
        session is not None and session.user_id is None and session.reconnects == 0,
    )


async def _removed_by_server(
    driver: RoomDriver, manager: LifecycleManager, timeline: Timeline, cleanups: dict[str, int]
) -> None:
    """Removed by the server: no grace window for PARTICIPANT_REMOVED"""
    driver.connect("erin", active=True)
    driver.disconnect("erin", rtc.DisconnectReason.PARTICIPANT_REMOVED)
    session = await manager.wait_for("erin", State.REMOVED, _WAIT)
    timeline.check(
        "cleaned once, removed at once", session.cleanups == 1 and manager.get("erin") is None
    )


_SCENARIOS = (_browser_refresh, _rapid_disconnects, _window_expired, _removed_by_server)


async def _graceful_shutdown(
    driver: RoomDriver, manager: LifecycleManager, timeline: Timeline, cleanups: dict[str, int]
) -> None:
    timeline.heading("Graceful shutdown: every participant cleaned once, TTS closed")
    closed: list[str] = []

    class DemoTTS:
        async def aclose(self) -> None:
            closed.append("tts")
            timeline.line("tts    closed")

    manager.add_resource(DemoTTS(), name="tts")
    driver.connect("dave", active=True)
    before = dict(cleanups)
    timeline.write("\n  state before shutdown:")
    for key, session in manager.sessions.items():
        timeline.write(f"    {key:<6} {session.state.value:<13} user_id={session.user_id}")
    await manager.aclose()
    cleaned_now = {k: v - before.get(k, 0) for k, v in cleanups.items() if v != before.get(k, 0)}
    timeline.check(
        "every connected participant cleaned exactly once",
        cleaned_now == {"alice": 1, "bob": 1, "carol": 1, "dave": 1},
    )
    timeline.check("TTS closed once", closed == ["tts"])
    timeline.check("no session left", manager.sessions == {})
