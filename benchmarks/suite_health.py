"""Health function vs baselines: cold-start proxy, warm latency, peak memory (issue 2).

Compared in one run, interleaved: (a) a bare handler returning constant JSON, (b) a
process importing only Powertools Logger and `pg8000.native` (the least a Powertools-style
database health check needs), (c) the same routes written the way many teams would:
FastAPI + Mangum + prometheus-fastapi-instrumentator (`benchmarks/peer_fastapi/app.py`),
and every function of template.yaml, imported as Lambda does (benchmarks.lambda_procs).
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

from benchmarks.lambda_procs import (
    FULL,
    QUICK,
    WORK,
    ColdSample,
    Plan,
    Variant,
    Worker,
    log,
    measure_cold,
    median_of,
    rotated,
)
from benchmarks.lambda_variants import (
    bench_python,
    build_variants,
    code_under_test,
    database,
    route_event,
)
from benchmarks.stats import iqr, pct, verdict

MEMORY_LIMIT_MB = 64.0  # "well under 128 MB": at most half of the smallest Lambda size
ROUTES = ("/health", "/health/live", "/health/ready", "/health/detailed")
WARM = ("a", "b", "health", "c")  # (b) serves /health only: the floor of a database check
Cold = dict[str, list[ColdSample]]
Warm = dict[tuple[str, str], list[float]]  # (variant, route) -> latencies, or per-batch p50s


class WarmRun:
    """Warm containers of (a), (b), health and (c), batches interleaved per route."""

    def __init__(self, python: Path, variants: dict[str, Variant], plan: Plan) -> None:
        self.ms: Warm = {}
        self.batch_p50: Warm = {}
        self.codes: dict[tuple[str, str], Counter[str]] = {}
        self.rss_mb: dict[str, float] = {}
        self.boto3: dict[str, bool] = {}
        self.invocations: dict[str, int] = {}
        self.log_lines = self.flush_failures = 0
        (WORK / "health").mkdir(parents=True, exist_ok=True)
        workers = [Worker(python, variants[k], WORK / "health") for k in WARM]
        try:
            self._measure(workers, plan)
        finally:
            for w in workers:
                w.close()

    def _measure(self, workers: list[Worker], plan: Plan) -> None:
        events = {route: route_event(route) for route in ROUTES}

        def serving(route: str) -> list[Worker]:
            return [w for w in workers if w.variant.key != "b" or route == "/health"]

        for route in ROUTES:
            for w in serving(route):
                w.run(events[route], plan.warmup)
        for r in range(plan.warm_rounds):
            for i, route in enumerate(ROUTES):
                for w in rotated(serving(route), r + i):
                    times, codes = w.run(events[route], plan.warm_batch)
                    key = (w.variant.key, route)
                    self.ms.setdefault(key, []).extend(times)
                    self.batch_p50.setdefault(key, []).append(statistics.median(times))
                    self.codes.setdefault(key, Counter()).update(codes)
        for w in workers:
            self.rss_mb[w.variant.key], self.boto3[w.variant.key] = w.rss()
            self.invocations[w.variant.key] = w.invocations
            if w.variant.key == "health":
                self.log_lines = w.log_lines("request")
                self.flush_failures = w.log_lines("metrics_flush")

    def p50(self, key: str, route: str) -> float:
        return pct(self.ms[(key, route)], 50)


def targets_table(cold: Cold, warm: WarmRun, functions: list[str]) -> list[str]:
    """The targets of issues 2 and 3, each a ratio or difference against a baseline of this run."""
    hc = cold.get("health", [])
    r_b = median_of(hc, "wall_ms") / median_of(cold.get("b", []), "wall_ms")
    r_c = median_of(hc, "wall_ms") / median_of(cold.get("c", []), "wall_ms")
    boto3 = sum(s.boto3 for s in hc)
    prom = sum(s.prometheus_client for s in hc)
    live = warm.p50("health", "/health/live") - warm.p50("a", "/health/live")
    h_h, h_c = warm.p50("health", "/health"), warm.p50("c", "/health")
    d_h, d_c = warm.p50("health", "/health/detailed"), warm.p50("c", "/health/detailed")
    statuses = Counter(str(s.status) for s in hc) + warm.codes[("health", "/health")]
    db_ok = set(statuses) == {"200"}
    detailed_ok = set(warm.codes[("health", "/health/detailed")]) == {"200"}
    mems = {k: median_of(cold[k], "rss_mb") for k in functions if cold.get(k)}
    worst = max(mems, key=lambda k: mems[k], default="")
    worst_mb = mems.get(worst, float("nan"))
    lines = [
        "### Targets",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
        f"| health cold import ≤ 1.5x (b) | {r_b:.2f}x | 1.5x | {verdict(r_b <= 1.5)} |",
        f"| health cold import ≤ 0.5x (c) | {r_c:.2f}x | 0.5x | {verdict(r_c <= 0.5)} |",
        f"| no boto3 with `DATABASE_URL` (after import or after `/health`) | {boto3}/{len(hc)} "
        f"processes loaded it, warm worker: {'yes' if warm.boto3['health'] else 'no'} | 0 | "
        f"{verdict(bool(hc) and boto3 == 0 and not warm.boto3['health'])} |",
        f"| prometheus_client on the recording path (health, after `/health`) | {prom}/"
        f"{len(hc)} processes loaded it | 0 | {verdict(bool(hc) and prom == 0)} |",
        f"| `/health/live` p50 within 0.3 ms of (a) | +{live:.3f} ms | +0.300 ms | "
        f"{verdict(live <= 0.3)} |",
        f"| `/health` p50 ≤ 0.6x (c) | {h_h / h_c:.2f}x ({h_h:.3f} vs {h_c:.3f} ms) | 0.6x | "
        f"{verdict(h_h / h_c <= 0.6 and db_ok)} |",
        f"| `/health/detailed` p50 ≤ 0.6x (c) | {d_h / d_c:.2f}x ({d_h:.3f} vs {d_c:.3f} ms) "
        f"| 0.6x | {verdict(d_h / d_c <= 0.6 and detailed_ok)} |",
        f"| every function's peak memory well under 128 MB | {worst_mb:.1f} MB ({worst}, the "
        f"largest; {len(mems)}/{len(functions)} functions measured) | {MEMORY_LIMIT_MB:.0f} MB "
        f"| {verdict(worst_mb <= MEMORY_LIMIT_MB and len(mems) == len(functions))} |",
        "",
    ]
    if not db_ok:
        lines += [
            f"⚠ `/health` did not always answer 200 ({dict(statuses)}): the latency "
            "numbers are not a database check.",
            "",
        ]
    return lines


def cold_table(
    plan: Plan, variants: dict[str, Variant], cold: Cold, errors: dict[str, str]
) -> list[str]:
    b, c = cold.get("b", []), cold.get("c", [])
    rows = []
    for v in variants.values():
        s = cold.get(v.key)
        if not s:
            rows.append(f"| {v.label} | error: {errors.get(v.key, 'no samples')} ||||||||")
            continue
        wall = [x.wall_ms for x in s]
        vs_b = [x.wall_ms / y.wall_ms for x, y in zip(s, b, strict=False)]
        boto = "yes" if any(x.boto3 for x in s) else "no"
        boto += f" / {max(x.botocore_modules for x in s)}"
        rows.append(
            f"| {v.label} | {statistics.median(wall):.1f} ({iqr(wall)}) | "
            f"{median_of(s, 'import_ms'):.1f} | {statistics.median(vs_b):.2f}x ({iqr(vs_b)}) | "
            f"{median_of(s, 'wall_ms') / median_of(c, 'wall_ms'):.2f}x | "
            f"{median_of(s, 'rss_mb'):.1f} ({median_of(s, 'rss_import_mb'):.1f}) | "
            f"{s[0].modules} | {boto} | {', '.join(sorted({str(x.status) for x in s}))} |"
        )
    return [
        "### Cold-start proxy and peak memory",
        "",
        f"{plan.cold_rounds} rounds of fresh processes after one discarded round.",
        "",
        "| process | spawn→ready ms (IQR) | import ms | vs (b) (IQR) | vs (c) | "
        "peak RSS MB (after import) | modules | boto3 / botocore modules | status |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def warm_table(plan: Plan, variants: dict[str, Variant], warm: WarmRun) -> list[str]:
    def cell(key: str, route: str) -> str:
        xs = warm.ms.get((key, route), [])
        return f"{pct(xs, 50):.3f} / {pct(xs, 99):.3f}" if xs else "-"

    def row(route: str) -> str:
        hb, ab, cb = (warm.batch_p50[(k, route)] for k in ("health", "a", "c"))
        d = [x - y for x, y in zip(hb, ab, strict=False)]
        q = [x / y for x, y in zip(hb, cb, strict=False)]
        hp = warm.p50("health", route)
        codes = f"{dict(warm.codes[('health', route)])} {dict(warm.codes[('c', route)])}"
        return (
            f"| `{route}` | {cell('a', route)} | {cell('b', route)} | {cell('health', route)} | "
            f"{cell('c', route)} | +{hp - warm.p50('a', route):.3f} ({iqr(d)}) | "
            f"{hp / warm.p50('c', route):.2f}x ({iqr(q)}) | {codes} |"
        )

    total = plan.warm_rounds * plan.warm_batch
    lines = [
        "",
        "### Warm latency (in-process invocations)",
        "",
        f"{plan.warmup} discarded invocations per route, then {plan.warm_rounds} rounds x "
        f"{plan.warm_batch} invocations per route and variant ({total} samples each); ms.",
        "",
        "| route | (a) p50 / p99 | (b) p50 / p99 | health p50 / p99 | (c) p50 / p99 | "
        "health Δ/(a) p50 | health ÷(c) p50 | statuses (health, c) |",
        "|---|---|---|---|---|---|---|---|",
        *(row(route) for route in ROUTES),
        "",
        "Warm processes after all their invocations: "
        + ", ".join(
            f"{variants[k].label} {warm.rss_mb[k]:.1f} MB peak RSS after "
            f"{warm.invocations[k]} invocations"
            for k in WARM
        )
        + f". Health request log lines (`type=request`): {warm.log_lines} for "
        f"{warm.invocations['health']} invocations; metrics flush failures logged "
        f"(`type=metrics_flush`): {warm.flush_failures}.",
        "",
    ]
    if warm.flush_failures:
        lines += [
            "⚠ The health function logged metrics flush failures: its timings include "
            "failed flushes (see `benchmarks/.work/health/health.log`).",
            "",
        ]
    return lines


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    tested = code_under_test()  # before the run: others may commit meanwhile
    python = bench_python()
    with database() as url:
        variants = build_variants(url)
        functions = [k for k in variants if k not in ("a", "b", "c")]
        log(f"cold start: {plan.cold_rounds} rounds x {len(variants)} variants")
        cold, errors = measure_cold(python, list(variants.values()), plan.cold_rounds)
        log(f"warm latency: {plan.warm_rounds} rounds x {plan.warm_batch} per route")
        warm = WarmRun(python, variants, plan)
    return "\n".join(
        [
            f"Code under test: {tested}; interpreter: `.venv-bench` ({sys.version.split()[0]} "
            "base).",
            "",
            *targets_table(cold, warm, functions),
            *cold_table(plan, variants, cold, errors),
            *warm_table(plan, variants, warm),
        ]
    )
