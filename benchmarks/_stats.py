"""Rows of the results table: samples per run, medians, ratios and targets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["higher", "lower"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass(frozen=True, slots=True)
class Target:
    """``ours <= limit`` (better="lower") or ``ours >= limit`` (better="higher")."""

    limit: float
    better: Better
    text: str

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value <= self.limit if self.better == "lower" else value >= self.limit


@dataclass(slots=True)
class Row:
    """One line of the table: our value and the baseline's, one sample per run.

    ``ratio`` is always ours ÷ baseline, so whether a ratio is good depends on
    ``better``. A target is checked against our median, except when
    ``target_on_ratio`` is set: then the ratio (ours ÷ baseline) is checked.
    """

    figure: str
    metric: str
    unit: str
    better: Better
    target: Target | None = None
    target_on_ratio: bool = False
    note: str = ""
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    @property
    def ours_median(self) -> float:
        return median(self.ours)

    @property
    def baseline_median(self) -> float:
        return median(self.baseline)

    @property
    def ratio(self) -> float:
        ours, base = self.ours_median, self.baseline_median
        if math.isnan(ours) or math.isnan(base) or base == 0:
            return math.nan
        return ours / base

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.target.met(self.ratio if self.target_on_ratio else self.ours_median)

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "metric": self.metric,
            "unit": self.unit,
            "better": self.better,
            "ours": {"median": _json_number(self.ours_median), "runs": self.ours},
            "baseline": (
                {"median": _json_number(self.baseline_median), "runs": self.baseline}
                if self.baseline
                else None
            ),
            "ratio": _json_number(self.ratio),
            "target": None if self.target is None else self.target.text,
            "target_met": self.met,
            "note": self.note,
        }


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def fmt(value: float, unit: str) -> str:
    """A compact human form: thousands separators, µs/ms/s scaled from seconds."""
    if math.isnan(value):
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:,.1f} µs"
        if value < 1.0:
            return f"{value * 1e3:,.1f} ms"
        return f"{value:,.2f} s"
    sep = "" if unit == "x" else " "
    if abs(value) >= 100:
        return f"{value:,.0f}{sep}{unit}".rstrip()
    return f"{value:,.2f}{sep}{unit}".rstrip()


def fmt_ratio(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.01:
        return f"{value:.2f}x"
    return f"{value:.2g}x"
