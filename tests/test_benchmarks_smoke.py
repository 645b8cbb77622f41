"""Smoke test: the benchmark runner runs in quick mode, prints every figure, writes valid JSON.

Nothing here looks at how fast anything is: the figures themselves live in
``docs/performance.md``. This only keeps ``python -m benchmarks`` from rotting.
The store figure needs a redis-server: without one the runner still runs and
says so in that figure's note, and its check here is skipped (naming the package).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from livekit_loopback.pytest_plugin import REDIS_SERVER, skip_missing
from livekit_loopback.redis_server import RedisUnavailable, find_redis_server

ROOT = Path(__file__).resolve().parent.parent

# Every figure the performance issue asks for, as the runner names them.
FIGURES = {
    "lifecycle throughput": ["events per second", "cost per event"],
    "event → state latency": ["p50", "p99"],
    "head-of-line isolation": ["p50", "p99"],
    "memory per session": ["bytes per active session"],
    "room size": ["attach to a room holding", "add one participant", "remove cost growth"],
    "shutdown": ["sessions, each cleanup 50 ms"],
    "soak": ["allocated blocks growth after warm-up"],
    "observability overhead": ["metrics on", "tracing on"],
    "store": ["RedisStore vs MemoryStore", "Redis answering in 5 ms", "anatomy: young collections"],
}
NEEDS_REDIS = {"store"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """``python -m benchmarks --quick`` once for this module: its JSON and what it printed."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--runs", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


def _check_rows(figure: str, rows: list[dict[str, Any]], stdout: str) -> None:
    mine = [row for row in rows if row["figure"] == figure]
    for metric in FIGURES[figure]:
        assert any(metric in row["metric"] for row in mine), (figure, metric)
    for row in mine:
        # Each row shows up in the printed table, with a real number for us.
        assert f"| {figure}" in stdout and row["metric"] in stdout
        assert isinstance(row["ours"]["median"], float), row
        assert math.isfinite(row["ours"]["median"]), row
        if row["baseline"] is not None:
            assert math.isfinite(row["baseline"]["median"]), row
            # A ratio exists unless the baseline's figure is 0 (e.g. no RSS growth).
            assert (row["ratio"] is None) == (row["baseline"]["median"] == 0), row


def test_quick_run_prints_every_figure_and_writes_json(
    quick_run: tuple[dict[str, Any], str],
) -> None:
    document, stdout = quick_run
    assert document["mode"] == "quick"
    assert document["machine"]["cpu_model"]
    assert document["machine"]["python"]
    rows = document["rows"]
    for figure in FIGURES.keys() - NEEDS_REDIS:
        _check_rows(figure, rows, stdout)
    for figure in NEEDS_REDIS:
        # Measured or not, the figure is printed with every metric.
        for metric in FIGURES[figure]:
            assert any(r["figure"] == figure and metric in r["metric"] for r in rows), metric
            assert metric in stdout
    comparable = [row for row in rows if row["baseline"] is not None]
    assert len(comparable) >= len(FIGURES)


def test_quick_run_measures_the_store(
    quick_run: tuple[dict[str, Any], str], request: pytest.FixtureRequest
) -> None:
    try:
        find_redis_server()
    except RedisUnavailable as exc:
        document, _ = quick_run
        notes = [row["note"] for row in document["rows"] if row["figure"] == "store"]
        assert any(note.startswith("not measured") for note in notes), notes
        skip_missing(request, [REDIS_SERVER], str(exc))
    document, stdout = quick_run
    _check_rows("store", document["rows"], stdout)
