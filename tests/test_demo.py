from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from livekit_lifecycle._demo import run_demo
from livekit_lifecycle._demo_live import LiveDemoUnavailable, run_live_demo
from livekit_lifecycle.cli import main


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
