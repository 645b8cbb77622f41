"""Smoke test: the benchmark runner runs in quick mode, prints every figure, writes valid JSON.

Nothing here looks at how fast anything is: the figures themselves live in
``docs/performance.md``. This only keeps ``python -m benchmarks`` from rotting.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

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
    "store": ["RedisStore vs MemoryStore", "Redis answering in 5 ms"],
}


def test_quick_run_prints_every_figure_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--runs", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["mode"] == "quick"
    assert document["machine"]["cpu_model"]
    assert document["machine"]["python"]
    rows = document["rows"]
    for figure, metrics in FIGURES.items():
        mine = [row for row in rows if row["figure"] == figure]
        for metric in metrics:
            assert any(metric in row["metric"] for row in mine), (figure, metric)
        for row in mine:
            # Each row shows up in the printed table, with a real number for us.
            assert f"| {figure}" in proc.stdout and row["metric"] in proc.stdout
            assert isinstance(row["ours"]["median"], float), row
            assert math.isfinite(row["ours"]["median"]), row
            if row["baseline"] is not None:
                assert math.isfinite(row["baseline"]["median"]), row
                # A ratio exists unless the baseline's figure is 0 (e.g. no RSS growth).
                assert (row["ratio"] is None) == (row["baseline"]["median"] == 0), row
    comparable = [row for row in rows if row["baseline"] is not None]
    assert len(comparable) >= len(FIGURES)
