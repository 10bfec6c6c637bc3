"""The statistics every suite reports with: percentiles and a target's verdict."""

from __future__ import annotations

from collections.abc import Sequence


def pct(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100), linear interpolation between the closest ranks."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) as one of the measured values (the closest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def iqr(values: Sequence[float]) -> str:
    return f"{pct(values, 25):.2f}-{pct(values, 75):.2f}"


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"
