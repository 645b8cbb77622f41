"""The pytest plugin as a user gets it: installed (a ``pytest11`` entry point), in a separate
pytest run of a project with no conftest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit_loopback.support import needs_network

pytestmark = pytest.mark.e2e

USER_TEST = """
import pytest


@pytest.mark.asyncio
@pytest.mark.loopback(leave_timeout=0.5)
async def test_agent_sees_a_user(loopback_server):
    assert loopback_server.leave_timeout == 0.5
    agent = await loopback_server.connect("agent", "room", kind="agent")
    await loopback_server.connect("alice", "room")
    await loopback_server.wait_for_participant("room", "alice", "active")
    assert "alice" in agent.remote_participants


@pytest.mark.asyncio
async def test_default_options(loopback_server):
    assert loopback_server.leave_timeout == 3.0
"""
RUN_TIMEOUT = 120


def _write_project(root: Path) -> None:
    (root / "test_user.py").write_text(USER_TEST)


def _pytest(root: Path, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [
        *(prefix or []),
        sys.executable,
        "-m",
        "pytest",
        str(root),
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        # pytest-asyncio's default (strict) mode: what a user starts from.
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    ]
    return subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


@needs_network
def test_user_tests_get_a_running_server_configured_by_the_marker(tmp_path: Path) -> None:
    _write_project(tmp_path)
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def _can_isolate_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_isolate_network(), reason="needs `unshare -rn` (unprivileged network namespaces)"
)
def test_without_a_network_interface_tests_are_skipped_not_hung(tmp_path: Path) -> None:
    # A network namespace has only `lo`: exactly the machine libwebrtc cannot use.
    _write_project(tmp_path)
    result = _pytest(tmp_path, prefix=["unshare", "-rn"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout
    assert "needs a non-loopback network interface" in result.stdout


MISSING_TEST = """
import pytest
from livekit_loopback.pytest_plugin import OptionalPackage, skip_missing

FROBNICATOR = OptionalPackage(
    "frobnicator", ("frobnicator",), then="frob --init", require_env="NEED_FROB"
)


@pytest.fixture
def frob(request):
    skip_missing(request, [FROBNICATOR], "frob is not on PATH")


def test_one(frob):
    pass


def test_two(frob):
    pass


@pytest.mark.asyncio
async def test_page(browser_client):
    pass
"""


def _run_without_packages(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A pytest run on a machine without Chromium nor livekit-client (PATH: the venv only)."""
    (root / "test_missing.py").write_text(MISSING_TEST)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_LIFECYCLE_")}
    clean.update(PATH=str(Path(sys.executable).parent), **env)
    command = [sys.executable, "-m", "pytest", str(root), "-q", "-rs", "-p", "no:cacheprovider"]
    return subprocess.run(
        command, cwd=root, env=clean, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


def test_missing_packages_skip_with_one_line_each_and_one_summary(tmp_path: Path) -> None:
    result = _run_without_packages(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "3 skipped" in out
    assert out.count("needs frobnicator: frob is not on PATH") == 2
    assert out.count("needs chromium, livekit-client (npm): no Chromium on PATH") == 1
    # The section comes after pytest's own short summary: the last thing before the counts.
    section = out[out.index("skipped for want of optional system packages") :]
    assert "short test summary" not in section
    assert "frobnicator: 2 tests skipped (test_missing.py)" in section
    assert "chromium: 1 test skipped (test_missing.py)" in section
    assert "livekit-client (npm): 1 test skipped (test_missing.py)" in section
    assert (
        "to run them too: sudo apt-get install -y chromium frobnicator npm && frob --init"
        f" && {sys.executable} -m livekit_loopback.browser_client install"
    ) in section


def test_a_required_package_that_is_missing_fails(tmp_path: Path) -> None:
    result = _run_without_packages(tmp_path, NEED_FROB="1", LIVEKIT_LIFECYCLE_REQUIRE_BROWSER="1")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "3 errors" in out  # the fixtures fail: a setup error each
    assert "NEED_FROB=1 but this machine lacks frobnicator" in out
    assert "LIVEKIT_LIFECYCLE_REQUIRE_BROWSER=1 but this machine lacks chromium" in out
    assert "skipped for want of" not in out
