"""What error tracking (Sentry) costs (issue 12): each function with it off and on, in one run.

Off is the default and must cost nothing; on, the price is the SDK's import and init in
every cold start, nothing on a successful invocation, and a capture plus a flush (the
report leaves before the invocation returns) on a failing one. "On" points SENTRY_DSN
at a loopback HTTP server standing in for Sentry's ingest, which also counts the events
it receives. Processes, layout and interpreter are the health suite's (`.venv-bench`).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.stats import iqr, pct
from benchmarks.suite_health import (
    FULL,
    QUICK,
    WORK,
    ColdSample,
    Variant,
    Worker,
    _code_under_test,
    _med,
    _route_event,
    bench_python,
    build_variants,
    database,
    rotated,
    spawn_cold,
)
from tools import LAYER_DIR
from tools.runtime.apigw import proxy_event
from tools.standins.sentry_ingest import SentryIngest, sentry_ingest

HERE = WORK.parent / "error_tracking"
# An API function of the bundle's shape with a route that raises: the router's 500 path.
FAILING_APP = """from ops.service import service_api

app = service_api()


@app.get("/fail")
def fail(req):
    raise RuntimeError("the handler failed")


lambda_handler = app.lambda_handler
"""
FUNCTIONS = ("health", "metrics", "retention")


def _failing_function(base: Variant) -> Variant:
    task = HERE / "task"  # /var/task, holding the package `failing`
    (task / "failing").mkdir(parents=True, exist_ok=True)
    (task / "failing" / "__init__.py").touch()
    (task / "failing" / "app.py").write_text(FAILING_APP)
    return replace(
        base,
        key="failing",
        label="failing route",
        paths=(str(task), str(LAYER_DIR)),
        handler="failing.app.lambda_handler",
        event=proxy_event(method="GET", path="/fail", resource="/fail"),
        cwd=str(task),
        first_party=frozenset({"failing", "ops"}),
    )


def _pair(v: Variant, ingest: SentryIngest) -> tuple[Variant, Variant]:
    off = replace(v, key=f"{v.key}-off", label=f"{v.label}, Sentry off")
    on = replace(
        v,
        key=f"{v.key}-on",
        label=f"{v.label}, Sentry on",
        env={**v.env, "SENTRY_DSN": ingest.dsn},
    )
    return off, on


def measure_cold(
    python: Path, variants: list[Variant], rounds: int
) -> tuple[dict[str, list[ColdSample]], dict[str, list[float]], dict[str, str]]:
    """The health suite's cold processes (variants alternating, a discarded warm-up round),
    plus each process's CPU time (user + system, from RUSAGE_CHILDREN): on a loaded machine
    wall time includes waiting for a CPU, CPU time does not."""
    samples: dict[str, list[ColdSample]] = {v.key: [] for v in variants}
    cpu_ms: dict[str, list[float]] = {v.key: [] for v in variants}
    errors: dict[str, str] = {}
    for r in range(rounds + 1):
        for v in rotated(variants, r):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            sample = spawn_cold(python, v)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if isinstance(sample, str):
                errors[v.key] = sample
            elif r > 0:
                samples[v.key].append(sample)
                used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                cpu_ms[v.key].append(used * 1000.0)
    return samples, cpu_ms, errors


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    code_under_test = _code_under_test()
    python = bench_python()
    HERE.mkdir(parents=True, exist_ok=True)
    with database() as url, sentry_ingest() as ingest:
        base = {v.key: v for v in build_variants(url)[0]}
        pairs = [_pair(base[name], ingest) for name in FUNCTIONS if name in base]
        cold_variants = [v for pair in pairs for v in pair]
        cold, cpu, errors = measure_cold(python, cold_variants, plan.cold_rounds)
        cold_events = len(ingest.events())

        # Warm: a successful route and a failing one, off and on, batches interleaved.
        failing_off, failing_on = _pair(_failing_function(base["health"]), ingest)
        health_off, health_on = pairs[0]
        cases = {
            "/health/live": (health_off, health_on, _route_event("/health/live")),
            "/health": (health_off, health_on, _route_event("/health")),
            "/fail (500)": (failing_off, failing_on, failing_on.event or {}),
        }
        logdir = HERE / "logs"
        logdir.mkdir(exist_ok=True)
        workers = {
            v.key: Worker(python, v, logdir)
            for v in (health_off, health_on, failing_off, failing_on)
        }
        ms: dict[tuple[str, str], list[float]] = {}
        batch_delta: dict[str, list[float]] = {}
        try:
            for off, on, event in cases.values():
                for v in (off, on):
                    workers[v.key].run(event, plan.warmup)
            ingest.clear()
            failing_calls = 0
            for r in range(plan.warm_rounds):
                for name, (off, on, event) in rotated(list(cases.items()), r):
                    p50 = {}
                    for v in rotated([off, on], r):
                        xs, _ = workers[v.key].run(event, plan.warm_batch)
                        ms.setdefault((name, v.key), []).extend(xs)
                        p50[v.key] = pct(xs, 50)
                        failing_calls += plan.warm_batch if v is failing_on else 0
                    batch_delta.setdefault(name, []).append(p50[on.key] - p50[off.key])
            warm_events = len(ingest.wait_for_events(failing_calls, timeout_s=10))
        finally:
            for w in workers.values():
                w.close()

    lines = [
        "## Error tracking (Sentry): cost with it off and on (issue 12)",
        "",
        f"Code under test: {code_under_test}. Each function imported as Lambda imports it "
        "(its folder and `layers/ops` on `sys.path`, `.venv-bench`'s interpreter, "
        "`DATABASE_URL` to a throwaway PostgreSQL), once without any Sentry setting (the "
        "default) and once with `SENTRY_DSN` pointing at a loopback server standing in for "
        "Sentry's ingest.",
        "",
        f"### Cold start ({plan.cold_rounds} rounds of fresh processes, variants alternating)",
        "",
        "*spawn→ready*: spawn to handler imported (SDK import and init included when on); "
        "*on - off*, *on ÷ off*: medians of the per-round differences and ratios (IQR); "
        "*CPU*: the process's user + system time, start to exit (one invocation included; "
        "unlike wall time, not inflated by waiting for a CPU on a loaded machine); "
        "*import*: the handler's import alone, timed inside the process; then one "
        "invocation (the function's own route or scheduled event), after which peak RSS "
        "is read.",
        "",
        "| function | off: spawn→ready ms | on: spawn→ready ms | on - off ms (IQR) | "
        "on ÷ off (IQR) | CPU ms off / on | CPU on ÷ off (IQR) | import off / on ms "
        "| RSS off / on MB | modules off / on | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for off, on in pairs:
        a, b = cold.get(off.key, []), cold.get(on.key, [])
        if not a or not b:
            why = errors.get(off.key) or errors.get(on.key)
            lines.append(f"| {off.label} | error: {why} |||||||||")
            continue
        ratios = [y.wall_ms / x.wall_ms for x, y in zip(a, b, strict=False)]
        deltas = [y.wall_ms - x.wall_ms for x, y in zip(a, b, strict=False)]
        ca, cb = cpu[off.key], cpu[on.key]
        cpu_ratios = [y / x for x, y in zip(ca, cb, strict=False) if x > 0]
        lines.append(
            f"| {off.key.removesuffix('-off')} | {_med(a, 'wall_ms'):.1f} | "
            f"{_med(b, 'wall_ms'):.1f} | +{statistics.median(deltas):.1f} ({iqr(deltas)}) | "
            f"{statistics.median(ratios):.2f}x ({iqr(ratios)}) | "
            f"{statistics.median(ca):.0f} / {statistics.median(cb):.0f} | "
            f"{statistics.median(cpu_ratios):.2f}x ({iqr(cpu_ratios)}) | "
            f"{_med(a, 'import_ms'):.1f} / {_med(b, 'import_ms'):.1f} | "
            f"{_med(a, 'rss_mb'):.1f} / {_med(b, 'rss_mb'):.1f} | "
            f"{_med(a, 'modules'):.0f} / {_med(b, 'modules'):.0f} | "
            f"{a[0].status} / {b[0].status} |"
        )
    total = plan.warm_rounds * plan.warm_batch
    lines += [
        "",
        f"Events the ingest received from the {len(pairs) * plan.cold_rounds} cold "
        f"processes with Sentry on (each invocation succeeded): {cold_events}.",
        "",
        f"### Warm invocations ({plan.warmup} discarded, then {plan.warm_rounds} rounds x "
        f"{plan.warm_batch} per route and variant = {total} samples each, interleaved)",
        "",
        "Timed: the handler call. On a successful invocation Sentry does nothing; a failing "
        "one captures the exception and waits for the report to reach the ingest (here on "
        "loopback; over the internet add the round trip to Sentry, bounded at 2 s).",
        "",
        "| route | off p50 / p99 ms | on p50 / p99 ms | on - off p50 ms (IQR of batches) |",
        "|---|---|---|---|",
    ]
    for name, (off, on, _) in cases.items():
        xo, xn = ms[(name, off.key)], ms[(name, on.key)]
        lines.append(
            f"| `{name}` | {pct(xo, 50):.3f} / {pct(xo, 99):.3f} | "
            f"{pct(xn, 50):.3f} / {pct(xn, 99):.3f} | "
            f"{pct(xn, 50) - pct(xo, 50):+.3f} ({iqr(batch_delta[name])}) |"
        )
    lines += [
        "",
        f"Failing invocations with Sentry on: {total}; events received: {warm_events} "
        "(one per failure, each sent before its invocation returned).",
        "",
        "### Method notes",
        "",
        f"- Machine load (1-min average) {load_before:.2f} before, {os.getloadavg()[0]:.2f} "
        f"after; {os.cpu_count()} CPUs; suite time {time.monotonic() - began:.0f} s"
        f"{' (--quick: fewer rounds, wider spread)' if quick else ''}.",
        "- Reproduce: `make bench SUITES=error_tracking` (or `.venv/bin/python -m benchmarks "
        "error_tracking [--quick]`).",
    ]
    return "\n".join(lines)
