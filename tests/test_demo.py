from __future__ import annotations

import io
import re
import subprocess
import sys

from livekit_lifecycle.cli import main
from livekit_lifecycle.demo import run_demo


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


def test_demo_command_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livekit_lifecycle", "demo", "--grace", "0.05"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout


def test_demo_rejects_a_zero_grace_window() -> None:
    assert main(["demo", "--grace", "0"]) == 2
