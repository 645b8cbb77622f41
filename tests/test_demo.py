from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from livekit_lifecycle._demo import run_demo
from livekit_lifecycle._demo_live import LiveDemoUnavailable, run_live_demo
from livekit_lifecycle.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "voice_agent.py"


async def test_demo_passes_every_check() -> None:
    out = io.StringIO()
    assert await run_demo(grace_period=0.05, out=out) == 0
    text = out.getvalue()
    for heading in (
        "User refresh",
        "Multiple disconnects",
        "Reconnection window",
        "Graceful shutdown",
    ):
        assert heading in text
    assert "FAILED" not in text and text.rstrip().endswith("all checks passed")
    assert re.search(r"grace\s+->\s+reconnected", text)


@pytest.mark.e2e
async def test_live_demo_over_real_connections_passes_every_check() -> None:
    out = io.StringIO()
    try:
        code = await run_live_demo(grace_period=1.0, out=out)
    except LiveDemoUnavailable as exc:
        pytest.skip(f"the loopback server cannot run here: {exc}")
    text = out.getvalue()
    assert code == 0, text
    for heading in ("User refresh", "Rapid reconnects", "Duplicate tab", "Lost leave"):
        assert heading in text
    assert "Window expired" in text and "Graceful shutdown" in text


def test_offline_demo_command_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livekit_lifecycle", "demo", "--offline", "--grace", "0.05"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout


def test_demo_rejects_a_zero_grace_window() -> None:
    assert main(["demo", "--grace", "0"]) == 2


@pytest.mark.e2e
async def test_worker_demo_plays_the_users_against_a_real_worker() -> None:
    pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
    from livekit_lifecycle._demo_worker import WorkerDemoUnavailable, run_worker_demo

    out = io.StringIO()
    try:
        code = await run_worker_demo(EXAMPLE, out=out)
    except WorkerDemoUnavailable as exc:
        pytest.skip(f"the worker demo cannot run here: {exc}")
    text = out.getvalue()
    assert code == 0, text
    assert "the first user was identified" in text and "every user's connections cleaned" in text
    assert re.search(r"grace\s+->\s+reconnected", text)


def test_worker_demo_without_its_agent_file_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--worker", "no/such/agent.py"]) == 2
    assert "no agent file at no/such/agent.py" in capsys.readouterr().err
