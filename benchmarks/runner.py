"""``python -m benchmarks``: run every figure against the baseline, print the table.

Each figure is measured ``--runs`` times in this process (ours and the
baseline in the same run, alternating who goes first); the table shows
medians, and every ratio is ours ÷ baseline. The soak runs once. The process
is pinned to one CPU unless ``--no-pin``. Nothing here asserts on time:
``--check`` turns missed targets into exit status 1 for those who want it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from typing import Any, TextIO

import livekit_lifecycle

from . import _latency, _lifecycle, _memory, _observability, _scaling, _shutdown, _soak, _store
from ._sizes import FULL, QUICK, Sizes
from ._stats import Row, fmt, fmt_ratio

Measure = Callable[[Sizes, int], Awaitable[list[Row]]]

FIGURES: dict[str, tuple[Measure, bool]] = {
    # name: (measure, repeated for every run)
    "lifecycle": (_lifecycle.measure, True),
    "latency": (_latency.measure, True),
    "memory": (_memory.measure, True),
    "room": (_scaling.measure, True),
    "shutdown": (_shutdown.measure, True),
    "observability": (_observability.measure, True),
    "store": (_store.measure, True),
    # The store figure's fleet_snapshot row alone (issue 20): only with `--only fleet`.
    "fleet": (_store.measure_fleet, True),
    "soak": (_soak.measure, False),
}
ON_REQUEST = {"fleet"}
"""Figures a run without ``--only`` leaves out (each repeats part of another figure)."""


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "pinned_to": affinity if len(affinity) == 1 else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "livekit": _version("livekit"),
        "transitions": _version("transitions"),
        "livekit_lifecycle": _version("livekit-lifecycle"),
        "livekit_lifecycle_path": os.path.dirname(livekit_lifecycle.__file__),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _pin_to_one_cpu() -> None:
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})


async def run_all(
    sizes: Sizes, runs: int, names: Sequence[str], progress: TextIO | None
) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    for name in names:
        measure, repeated = FIGURES[name]
        for run in range(runs if repeated else 1):
            started = time.perf_counter()
            for row in await measure(sizes, run):
                merged = rows.setdefault((row.figure, row.metric), row)
                if merged is not row:
                    merged.ours.extend(row.ours)
                    merged.baseline.extend(row.baseline)
            gc.collect()
            if progress is not None:
                elapsed = time.perf_counter() - started
                print(f"  {name} run {run + 1}: {elapsed:.1f} s", file=progress, flush=True)
    return list(rows.values())


def table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table (medians; ratio = ours ÷ baseline)."""
    header = ("figure", "metric", "ours", "baseline", "ours ÷ baseline", "target", "met")
    lines = [header]
    for row in rows:
        met = {None: "", True: "yes", False: "**no**"}[row.met]
        lines.append(
            (
                row.figure,
                row.metric,
                fmt(row.ours_median, row.unit),
                fmt(row.baseline_median, row.unit) if row.baseline else "",
                fmt_ratio(row.ratio) if row.baseline else "",
                "" if row.target is None else row.target.text,
                met,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if number == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def notes(rows: Sequence[Row]) -> str:
    return "\n".join(f"- {row.figure} / {row.metric}: {row.note}" for row in rows if row.note)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="livekit-lifecycle benchmarks against the seed's hand-written baseline.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run in a few seconds"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per figure (default: 5, quick: 3)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument(
        "--only",
        metavar="FIGURE",
        action="append",
        choices=sorted(FIGURES),
        help="run only this figure (repeatable)",
    )
    parser.add_argument(
        "--soak-cycles", type=int, default=None, help="override the soak's cycle count"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.soak_cycles is not None:
        sizes = dataclasses.replace(sizes, soak_cycles=args.soak_cycles)
    runs = args.runs if args.runs is not None else (3 if args.quick else 5)
    if runs < 1:
        raise SystemExit("--runs must be at least 1")
    names = (
        [name for name in FIGURES if name in args.only]
        if args.only
        else [name for name in FIGURES if name not in ON_REQUEST]
    )
    if not args.no_pin:
        _pin_to_one_cpu()
    info = machine()
    mode = "quick" if args.quick else "full"
    print(
        f"livekit-lifecycle benchmarks ({mode}, {runs} runs, medians)\n"
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), pinned to {info['pinned_to']},"
        f" {info['python']}; livekit {info['livekit']}, transitions {info['transitions']}\n"
        f"code under test: {info['livekit_lifecycle_path']}",
        flush=True,
    )
    started = time.perf_counter()
    rows = asyncio.run(run_all(sizes, runs, names, sys.stderr))
    print()
    print(table(rows))
    print()
    print("ratio = ours ÷ baseline (for events/s higher is better, for costs lower is better)")
    print(notes(rows))
    print(f"\ntotal: {time.perf_counter() - started:.1f} s")
    if args.json:
        document = {
            "mode": mode,
            "runs": runs,
            "machine": info,
            "sizes": dataclasses.asdict(sizes),
            "rows": [row.as_dict() for row in rows],
        }
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, ensure_ascii=False)
            out.write("\n")
    missed = [row for row in rows if row.met is False]
    return 1 if args.check and missed else 0
