"""Prometheus metrics (livekit_lifecycle.metrics): names, labels and values off a real registry."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from livekit import rtc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle.metrics import IGNORED_REASONS, METRIC_NAMES, enable_metrics
from livekit_lifecycle.statechart import PARTICIPANT_CHART
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager

WAIT = 5.0
ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample as the exposition format shows it, parsed back by prometheus-client."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _user_of(participant: rtc.RemoteParticipant) -> str:
    return participant.attributes.get("user", participant.identity)


async def test_every_series_with_zeros_before_anything_happens(make_manager: MakeManager) -> None:
    registry = CollectorRegistry()
    manager = make_manager()
    enable_metrics(manager, registry)
    samples = scrape(registry)
    names = {name for name, _ in samples}
    for name in METRIC_NAMES:
        if name.endswith("_seconds"):
            assert f"{name}_count" in names and f"{name}_bucket" in names
        else:
            assert name in names, name
    for state in State:
        assert value(samples, "livekit_lifecycle_sessions", state=state.value) == 0
    for trigger in PARTICIPANT_CHART.triggers:
        assert value(samples, "livekit_lifecycle_transitions_total", trigger=trigger) == 0
    for reason in IGNORED_REASONS:
        assert value(samples, "livekit_lifecycle_events_ignored_total", reason=reason) == 0
    for outcome in ("ok", "error", "timeout"):
        assert value(samples, "livekit_lifecycle_cleanups_total", outcome=outcome) == 0


async def test_values_follow_a_refresh_a_takeover_an_expiry_and_shutdown(
    driver: RoomDriver,
) -> None:
    registry = CollectorRegistry()
    manager = LifecycleManager(LifecycleConfig(grace_period=0.05, session_key=_user_of))
    enable_metrics(manager, registry)
    enable_metrics(manager, registry)  # idempotent: counted once
    manager.add_cleanup(lambda session: None)
    manager.attach(driver.room)

    first = driver.connect("alice", active=True)
    driver.refresh("alice")  # disconnect -> grace -> reconnect
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    driver.redeliver_disconnect(first)  # stale: an old connection
    driver.connect("tab-1", active=True, attributes={"user": "bob"})
    driver.connect("tab-2", active=True, attributes={"user": "bob"})  # takeover
    await manager.wait_for("bob", State.ACTIVE, WAIT)
    driver.connect("carol", active=True)
    driver.disconnect("carol")
    await manager.wait_for("carol", State.REMOVED, WAIT)  # grace expired
    await manager.idle()

    samples = scrape(registry)
    assert value(samples, "livekit_lifecycle_sessions", state="active") == 2
    assert value(samples, "livekit_lifecycle_sessions", state="grace") == 0
    assert value(samples, "livekit_lifecycle_reconnects_total") == 2  # refresh + takeover
    assert value(samples, "livekit_lifecycle_takeovers_total") == 1
    assert value(samples, "livekit_lifecycle_grace_expired_total") == 1
    assert value(samples, "livekit_lifecycle_transitions_total", trigger="expire") == 1
    assert value(samples, "livekit_lifecycle_transitions_total", trigger="reconnect") == 1
    assert value(samples, "livekit_lifecycle_transitions_total", trigger="disconnect") == 2
    assert value(samples, "livekit_lifecycle_events_ignored_total", reason="stale_sid") >= 1
    assert value(samples, "livekit_lifecycle_cleanups_total", outcome="ok") == 3
    assert value(samples, "livekit_lifecycle_cleanup_duration_seconds_count") == 3
    assert value(samples, "livekit_lifecycle_shutdown_duration_seconds_count") == 0

    await manager.aclose()
    samples = scrape(registry)
    # Counters survive the manager (they never go down); its sessions are gone.
    assert value(samples, "livekit_lifecycle_cleanups_total", outcome="ok") == 5
    assert value(samples, "livekit_lifecycle_transitions_total", trigger="shutdown") == 2
    assert value(samples, "livekit_lifecycle_shutdown_duration_seconds_count") == 1
    assert value(samples, "livekit_lifecycle_sessions", state="active") == 0
    again = scrape(registry)
    assert value(again, "livekit_lifecycle_cleanups_total", outcome="ok") == 5


async def test_cleanup_outcomes_error_and_timeout(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    registry = CollectorRegistry()
    manager = make_manager(grace_period=0, cleanup_timeout=0.05)
    enable_metrics(manager, registry)

    async def cleanup(session: Session) -> None:
        if session.key == "slow":
            await asyncio.sleep(10)
        if session.key == "bad":
            raise RuntimeError("boom")

    manager.add_cleanup(cleanup)
    for key in ("ok", "bad", "slow"):
        driver.connect(key, active=True)
        driver.disconnect(key)
    await asyncio.wait_for(manager.idle(), WAIT)
    assert manager.sessions == {}
    samples = scrape(registry)
    for outcome in ("ok", "error", "timeout"):
        assert value(samples, "livekit_lifecycle_cleanups_total", outcome=outcome) == 1
    assert value(samples, "livekit_lifecycle_cleanup_duration_seconds_bucket", le="0.025") == 2
    assert value(samples, "livekit_lifecycle_cleanup_duration_seconds_bucket", le="+Inf") == 3


async def test_managers_share_one_registry_and_rooms_label_when_asked() -> None:
    registry = CollectorRegistry()
    async with RoomDriver("room-a") as a, RoomDriver("room-b") as b:
        managers = []
        for driver in (a, b):
            manager = LifecycleManager(LifecycleConfig(grace_period=30))
            enable_metrics(manager, registry, room_label=True)
            manager.attach(driver.room)
            managers.append(manager)
        a.connect("alice", active=True)
        b.connect("bob", active=True)
        b.connect("carol")
        samples = scrape(registry)
        assert value(samples, "livekit_lifecycle_sessions", room="room-a", state="active") == 1
        assert value(samples, "livekit_lifecycle_sessions", room="room-b", state="active") == 1
        assert value(samples, "livekit_lifecycle_sessions", room="room-b", state="connecting") == 1
        with pytest.raises(ValueError, match="room_label"):
            enable_metrics(LifecycleManager(), registry)
        await managers[0].aclose()
        last = scrape(registry)  # a closed room is reported once more, then dropped
        assert (
            value(last, "livekit_lifecycle_transitions_total", room="room-a", trigger="shutdown")
            == 1
        )
        gone = scrape(registry)
        assert not any(dict(labels).get("room") == "room-a" for _, labels in gone)
        await managers[1].aclose()


async def test_config_flag_uses_the_default_registry(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    from prometheus_client import REGISTRY

    def activations() -> float:
        found = REGISTRY.get_sample_value(
            "livekit_lifecycle_transitions_total", {"trigger": "activate"}
        )
        return found or 0.0

    before = activations()
    manager = make_manager()
    enable_metrics(manager)
    other = make_manager(attach=False)  # a second manager adds to the same series
    enable_metrics(other)
    driver.connect("alice", active=True)
    assert manager.state_of("alice") is State.ACTIVE and other.sessions == {}
    assert activations() == before + 1
    assert REGISTRY.get_sample_value("livekit_lifecycle_sessions", {"state": "active"}) == 1


async def test_the_livekit_agents_worker_endpoint_serves_them(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    # The very server a livekit-agents Worker starts on WorkerOptions(prometheus_port=...):
    # it serves prometheus-client's default registry at /metrics.
    import aiohttp

    HttpServer = pytest.importorskip(
        "livekit.agents.telemetry.http_server", reason="needs livekit-agents (the 'agents' extra)"
    ).HttpServer

    enable_metrics(make_manager())
    driver.connect("alice", active=True)
    server = HttpServer("127.0.0.1", 0)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
    finally:
        await server.aclose()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in METRIC_NAMES:
        assert name.removesuffix("_total") in families, name
    assert 'livekit_lifecycle_sessions{state="active"} 1.0' in text
    assert "lk_agents_active_job_count" in families  # livekit-agents' own, side by side


async def test_a_manager_dropped_without_a_shutdown_keeps_its_counts(driver: RoomDriver) -> None:
    import gc

    registry = CollectorRegistry()
    manager = LifecycleManager()
    enable_metrics(manager, registry)
    manager.attach(driver.room)
    driver.connect("alice", active=True)
    assert value(scrape(registry), "livekit_lifecycle_sessions", state="active") == 1
    manager.detach()
    del manager
    gc.collect()
    samples = scrape(registry)
    assert value(samples, "livekit_lifecycle_transitions_total", trigger="activate") == 1
    assert value(samples, "livekit_lifecycle_sessions", state="active") == 0


_JOB_PROCESS = """
import asyncio, sys
from livekit_lifecycle import LifecycleConfig, LifecycleManager
from livekit_lifecycle.metrics import enable_metrics
from livekit_lifecycle.testing import RoomDriver

async def main():
    async with RoomDriver("job-room") as driver:
        manager = LifecycleManager(LifecycleConfig(grace_period=0))
        enable_metrics(manager)
        manager.add_cleanup(lambda session: None)
        manager.attach(driver.room)
        driver.connect("alice", active=True)
        driver.connect("bob", active=True)
        driver.disconnect("bob")
        await manager.idle()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await manager.aclose()

asyncio.run(main())
"""


async def test_a_job_process_shows_on_the_worker_endpoint_in_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # livekit-agents runs each job in a process of its own; with
    # WorkerOptions(prometheus_multiproc_dir=...) its endpoint reads every process's
    # files (prometheus-client's multiprocess mode), which our counts are copied into.
    import aiohttp

    HttpServer = pytest.importorskip(
        "livekit.agents.telemetry.http_server", reason="needs livekit-agents (the 'agents' extra)"
    ).HttpServer

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    job = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _JOB_PROCESS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    server = HttpServer("127.0.0.1", 0)
    await server.start()

    async def scrape_worker() -> Samples:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/metrics") as response,
        ):
            text = await response.text()
            if response.status != 200:
                # prometheus-client's reader can catch a process's file between its
                # creation and its first write (500): the next scrape reads it whole.
                return {}
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def until(check: Callable[[Samples], bool]) -> Samples:
        deadline = asyncio.get_running_loop().time() + WAIT * 2
        while True:
            samples = await scrape_worker()
            if check(samples) or asyncio.get_running_loop().time() > deadline:
                return samples
            await asyncio.sleep(0.1)

    try:
        assert job.stdout is not None and job.stdin is not None
        assert await asyncio.wait_for(job.stdout.readline(), WAIT * 2) == b"ready\n"
        key = ("livekit_lifecycle_sessions", (("state", "active"),))
        samples = await until(lambda s: s.get(key) == 1)  # flushed within a second
        assert samples.get(key) == 1
        assert value(samples, "livekit_lifecycle_cleanups_total", outcome="ok") == 1
        job.stdin.write(b"close\n")
        assert await asyncio.wait_for(job.wait(), WAIT * 2) == 0
        samples = await scrape_worker()  # the shutdown's last copy
        assert samples.get(key) == 0
        assert value(samples, "livekit_lifecycle_cleanups_total", outcome="ok") == 2
        assert value(samples, "livekit_lifecycle_transitions_total", trigger="shutdown") == 1
        assert value(samples, "livekit_lifecycle_shutdown_duration_seconds_count") == 1
        assert value(samples, "livekit_lifecycle_cleanup_duration_seconds_bucket", le="+Inf") == 2
    finally:
        await server.aclose()
        if job.returncode is None:
            job.kill()
            await job.wait()
