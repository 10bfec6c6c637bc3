"""What an optional feature (error tracking, tracing) costs: the same functions with it off
and on, as fresh processes (cold) and as warm containers, interleaved, and the section
that reports it. Used by the error_tracking and tracing suites; the processes are
benchmarks.lambda_procs'. What the columns mean: benchmarks/README.md, above each section.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.lambda_procs import (
    ColdSample,
    Plan,
    Variant,
    Worker,
    measure_cold,
    median_of,
    rotated,
)
from benchmarks.stats import iqr, pct

Pair = tuple[Variant, Variant]  # off, on
Case = tuple[Variant, Variant, dict[str, Any]]  # off, on, the event each invocation gets


class WarmPairs:
    """Warm containers of each case's off and on variants, batches interleaved; `ms` by
    (case, variant key), `deltas` by case: per-batch p50 of on minus off."""

    def __init__(
        self,
        python: Path,
        cases: dict[str, Case],
        plan: Plan,
        logdir: Path,
        before_timed: Callable[[], object] = lambda: None,
    ) -> None:
        self.ms: dict[tuple[str, str], list[float]] = {}
        self.deltas: dict[str, list[float]] = {}
        logdir.mkdir(parents=True, exist_ok=True)
        variants = {v.key: v for off, on, _ in cases.values() for v in (off, on)}
        workers = {key: Worker(python, v, logdir) for key, v in variants.items()}
        try:
            for off, on, event in cases.values():
                for v in (off, on):
                    workers[v.key].run(event, plan.warmup)
            before_timed()
            for r in range(plan.warm_rounds):
                for name, (off, on, event) in rotated(list(cases.items()), r):
                    p50 = {}
                    for v in rotated([off, on], r):
                        xs, _ = workers[v.key].run(event, plan.warm_batch)
                        self.ms.setdefault((name, v.key), []).extend(xs)
                        p50[v.key] = pct(xs, 50)
                    self.deltas.setdefault(name, []).append(p50[on.key] - p50[off.key])
        finally:
            for w in workers.values():
                w.close()


def _both(a: list[ColdSample], b: list[ColdSample], attr: str, digits: int) -> str:
    return f"{median_of(a, attr):.{digits}f} / {median_of(b, attr):.{digits}f}"


def cold_table(
    pairs: dict[str, Pair], cold: dict[str, list[ColdSample]], errors: dict[str, str]
) -> list[str]:
    lines = [
        "| function | spawn→ready ms off / on | on - off ms (IQR) | CPU ms off / on | "
        "CPU on ÷ off (IQR) | RSS MB off / on | modules off / on | status off / on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (off, on) in pairs.items():
        a, b = cold.get(off.key, []), cold.get(on.key, [])
        if not (a and b):
            lines.append(f"| {name} | error: {errors.get(off.key) or errors.get(on.key)} |||||||")
            continue
        deltas = [y.wall_ms - x.wall_ms for x, y in zip(a, b, strict=False)]
        cpu = [y.cpu_ms / x.cpu_ms for x, y in zip(a, b, strict=False) if x.cpu_ms > 0]

        lines.append(
            f"| {name} | {_both(a, b, 'wall_ms', 1)} | {statistics.median(deltas):+.1f} "
            f"({iqr(deltas)}) | {_both(a, b, 'cpu_ms', 0)} | "
            f"{statistics.median(cpu):.2f}x ({iqr(cpu)}) | {_both(a, b, 'rss_mb', 1)} | "
            f"{_both(a, b, 'modules', 0)} | {a[0].status} / {b[0].status} |"
        )
    return lines


def warm_table(cases: dict[str, Case], warm: WarmPairs) -> list[str]:
    lines = [
        "| route | off p50 / p99 ms | on p50 / p99 ms | on - off p50 ms (IQR of batches) |",
        "|---|---|---|---|",
    ]
    for name, (off, on, _) in cases.items():
        xo, xn, d = warm.ms[(name, off.key)], warm.ms[(name, on.key)], warm.deltas[name]
        lines.append(
            f"| `{name}` | {pct(xo, 50):.3f} / {pct(xo, 99):.3f} | "
            f"{pct(xn, 50):.3f} / {pct(xn, 99):.3f} | {statistics.median(d):+.3f} ({iqr(d)}) |"
        )
    return lines


def pair(v: Variant, on_env: dict[str, str], common: dict[str, str] | None = None) -> Pair:
    """`v` with the feature off (no setting) and on (`on_env`); `common` in both."""
    env = {**v.env, **(common or {})}
    off = replace(v, key=f"{v.key}-off", env=env)
    return off, replace(v, key=f"{v.key}-on", env={**env, **on_env})


def cold_pairs(
    python: Path, pairs: dict[str, Pair], plan: Plan
) -> tuple[dict[str, list[ColdSample]], dict[str, str]]:
    return measure_cold(python, [v for p in pairs.values() for v in p], plan.cold_rounds)


def section(
    plan: Plan,
    tested: str,
    cold: tuple[dict[str, Pair], dict[str, list[ColdSample]], dict[str, str], str],
    warm: tuple[dict[str, Case], WarmPairs, str, str],
) -> str:
    """The suite's section: `cold` (pairs, samples, errors, a note under the table) and
    `warm` (cases, measurements, what was warm, a note under the table)."""
    pairs, samples, errors, cold_note = cold
    cases, pairs_warm, what, warm_note = warm
    total = plan.warm_rounds * plan.warm_batch
    return "\n".join(
        [
            f"Code under test: {tested}.",
            "",
            f"### Cold start ({plan.cold_rounds} rounds of fresh processes, variants alternating)",
            "",
            *cold_table(pairs, samples, errors),
            "",
            cold_note,
            "",
            f"### Warm invocations{what} ({plan.warmup} discarded, then {plan.warm_rounds} rounds"
            f" x {plan.warm_batch} per route and variant = {total} samples each, interleaved)",
            "",
            *warm_table(cases, pairs_warm),
            "",
            warm_note,
        ]
    )
