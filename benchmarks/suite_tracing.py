"""What tracing (OpenTelemetry) costs (issue 21): off against `main`, and on against off.

Off is the default and must cost nothing: the same functions are run from `main`'s code
(a `git archive` of it, the baseline) and from this checkout with no OTEL_* setting, in
one run, cold and warm. On, the price is the SDK's import and set-up in every cold start
and, per invocation, the spans plus their export before the invocation returns (a
BatchSpanProcessor force-flushed at the end: one POST per invocation). "On" points
OTEL_EXPORTER_OTLP_ENDPOINT at a loopback OTLP receiver (tools.standins.otlp_receiver), which also
counts the spans. A third warm variant swaps in a SimpleSpanProcessor (one POST per span,
sent as each span ends) to show why the flush is batched. Processes, layout and
interpreter are the health suite's (`.venv-bench`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.stats import iqr, pct
from benchmarks.suite_error_tracking import measure_cold
from benchmarks.suite_health import (
    FULL,
    QUICK,
    WORK,
    Variant,
    Worker,
    _apigw,
    _code_under_test,
    _med,
    _route_event,
    bench_python,
    build_variants,
    database,
    rotated,
)
from tools import ROOT
from tools.standins.otlp_receiver import OtlpReceiver, otlp_receiver

HERE = WORK.parent / "tracing"
FUNCTIONS = ("health", "metrics", "retention")
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
# A variant's handler module that swaps the batch processor for the simple one before the
# function is imported (ops.tracing imports BatchSpanProcessor from this module at init).
SIMPLE_SHIM = """import opentelemetry.sdk.trace.export as export

export.BatchSpanProcessor = export.SimpleSpanProcessor
from app import lambda_handler  # noqa: E402
"""


def _main_checkout() -> tuple[Path, str]:
    """`main`'s functions/ and layers/ (committed), unpacked once per run."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "main"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = HERE / f"main-{sha}"
    if not out.exists():
        archive = HERE / "main.tar"
        subprocess.run(
            ["git", "archive", "-o", str(archive), "main", "functions", "layers"],
            cwd=ROOT,
            check=True,
        )
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
        archive.unlink()
    return out, sha


def _variants(base: Variant, main_dir: Path, receiver: OtlpReceiver) -> dict[str, Variant]:
    name = base.key
    task_root = main_dir / "functions"  # /var/task: the functions' packages
    env = {**base.env, "_X_AMZN_TRACE_ID": TRACE_HEADER}
    on_env = {
        **env,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
    }
    return {
        "main": replace(
            base,
            key=f"{name}-main",
            label=f"{name}, main",
            paths=(str(task_root), str(main_dir / "layers" / "ops")),
            cwd=str(task_root),
            env=env,
        ),
        "off": replace(base, key=f"{name}-off", label=f"{name}, tracing off", env=env),
        "on": replace(base, key=f"{name}-on", label=f"{name}, tracing on", env=on_env),
    }


def _simple(on: Variant) -> Variant:
    shim = HERE / "simple"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "simple_processor.py").write_text(SIMPLE_SHIM)
    return replace(
        on,
        key=f"{on.key}-simple",
        label=f"{on.label}, SimpleSpanProcessor",
        paths=(str(shim), *on.paths),
        handler="simple_processor.lambda_handler",
    )


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    began = time.monotonic()
    load_before = os.getloadavg()
    code_under_test = _code_under_test()
    python = bench_python()
    HERE.mkdir(parents=True, exist_ok=True)
    main_dir, main_sha = _main_checkout()
    with database() as url, otlp_receiver() as receiver:
        base = {v.key: v for v in build_variants(url)[0]}
        trios = {name: _variants(base[name], main_dir, receiver) for name in FUNCTIONS}
        cold_variants = [v for trio in trios.values() for v in trio.values()]
        cold, cpu, errors = measure_cold(python, cold_variants, plan.cold_rounds)
        cold_spans = len(receiver.spans())

        health = trios["health"]
        simple = _simple(health["on"])
        # The last one without its token: a 401, counted in auth_failures_total (not on main).
        events = {
            "/health/live": _route_event("/health/live"),
            "/health": _route_event("/health"),
            "/health/detailed": _route_event("/health/detailed"),
            "/health/detailed (401)": _apigw("/health/detailed", Accept="application/json"),
        }
        routes = tuple(events)
        logdir = HERE / "logs"
        logdir.mkdir(exist_ok=True)
        warm = [health["main"], health["off"], health["on"], simple]
        workers = {v.key: Worker(python, v, logdir) for v in warm}
        ms: dict[tuple[str, str], list[float]] = {}
        deltas: dict[tuple[str, str], list[float]] = {}
        try:
            for route in routes:
                for v in warm:
                    workers[v.key].run(events[route], plan.warmup)
            receiver.clear()
            for r in range(plan.warm_rounds):
                for route in rotated(routes, r):
                    p50 = {}
                    for v in rotated(warm, r):
                        xs, _ = workers[v.key].run(events[route], plan.warm_batch)
                        ms.setdefault((route, v.key), []).extend(xs)
                        p50[v.key] = pct(xs, 50)
                    off, main, on = health["off"].key, health["main"].key, health["on"].key
                    deltas.setdefault((route, "off-main"), []).append(p50[off] - p50[main])
                    deltas.setdefault((route, "on-off"), []).append(p50[on] - p50[off])
                    deltas.setdefault((route, "simple-on"), []).append(p50[simple.key] - p50[on])
            warm_spans = len(receiver.spans())
            warm_posts = len(receiver.exports)
        finally:
            for w in workers.values():
                w.close()

    lines = [
        "## Tracing (OpenTelemetry): off against main, on against off (issue 21)",
        "",
        f"Code under test: {code_under_test}; baseline: `main` at `{main_sha}` (a `git "
        "archive` of its functions/ and layers/). Each function imported as Lambda imports "
        "it (`.venv-bench`'s interpreter, `DATABASE_URL` to a throwaway PostgreSQL, "
        "`_X_AMZN_TRACE_ID` set with `Sampled=1`): from `main`; from this checkout with no "
        "OTEL_* setting (off, the default); and with `OTEL_TRACES_EXPORTER=otlp` and "
        "`OTEL_EXPORTER_OTLP_ENDPOINT` at a loopback OTLP/HTTP receiver (on).",
        "",
        f"### Cold start ({plan.cold_rounds} rounds of fresh processes, variants alternating)",
        "",
        "*spawn→ready*: spawn to handler imported (with tracing on: the SDK's import and "
        "set-up); *CPU*: the process's user + system time, start to exit, one invocation "
        "included (its spans exported when on); medians, IQR in brackets.",
        "",
        "| function | spawn→ready ms main / off / on | off - main ms (IQR) | "
        "on - off ms (IQR) | CPU ms main / off / on | CPU on ÷ off (IQR) | "
        "RSS MB main / off / on | modules main / off / on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, trio in trios.items():
        a, b, c = (cold.get(trio[k].key, []) for k in ("main", "off", "on"))
        if not (a and b and c):
            why = next((errors[v.key] for v in trio.values() if v.key in errors), "no samples")
            lines.append(f"| {name} | error: {why} |||||||")
            continue
        off_main = [y.wall_ms - x.wall_ms for x, y in zip(a, b, strict=False)]
        on_off = [y.wall_ms - x.wall_ms for x, y in zip(b, c, strict=False)]
        ca, cb, cc = (cpu[trio[k].key] for k in ("main", "off", "on"))
        cpu_ratio = [y / x for x, y in zip(cb, cc, strict=False) if x > 0]
        lines.append(
            f"| {name} | {_med(a, 'wall_ms'):.1f} / {_med(b, 'wall_ms'):.1f} / "
            f"{_med(c, 'wall_ms'):.1f} | {statistics.median(off_main):+.1f} ({iqr(off_main)}) | "
            f"{statistics.median(on_off):+.1f} ({iqr(on_off)}) | "
            f"{statistics.median(ca):.0f} / {statistics.median(cb):.0f} / "
            f"{statistics.median(cc):.0f} | {statistics.median(cpu_ratio):.2f}x "
            f"({iqr(cpu_ratio)}) | {_med(a, 'rss_mb'):.1f} / {_med(b, 'rss_mb'):.1f} / "
            f"{_med(c, 'rss_mb'):.1f} | {_med(a, 'modules'):.0f} / {_med(b, 'modules'):.0f} / "
            f"{_med(c, 'modules'):.0f} |"
        )
    total = plan.warm_rounds * plan.warm_batch
    lines += [
        "",
        f"Spans the receiver got from the {len(trios) * plan.cold_rounds} cold processes "
        f"with tracing on: {cold_spans}.",
        "",
        f"### Warm invocations of the health function ({plan.warmup} discarded, then "
        f"{plan.warm_rounds} rounds x {plan.warm_batch} per route and variant = {total} "
        "samples each, interleaved)",
        "",
        "Timed: the handler call, spans' export included when on (loopback receiver; to "
        "X-Ray in-region add the round trip and the SigV4 signing, bounded at 1 s). "
        "*off - main*: what the tracing hooks cost when off (the goal: ~0), and on the 401 "
        "also counting the refusal in `auth_failures_total`; *on - off*: "
        "spans plus one export per invocation; *simple - batch*: the SimpleSpanProcessor "
        "(a POST per span) against the batch processor force-flushed once. Per-batch p50 "
        "differences, median (IQR).",
        "",
        "| route | main p50 / p99 ms | off p50 / p99 ms | on p50 / p99 ms | "
        "simple p50 ms | off - main p50 ms | on - off p50 ms | simple - batch p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for route in routes:
        xm, xo, xn, xs = (
            ms[(route, v.key)] for v in (health["main"], health["off"], health["on"], simple)
        )

        def med(kind: str, route: str = route) -> str:
            d = deltas[(route, kind)]
            return f"{statistics.median(d):+.3f} ({iqr(d)})"

        lines.append(
            f"| `{route}` | {pct(xm, 50):.3f} / {pct(xm, 99):.3f} | "
            f"{pct(xo, 50):.3f} / {pct(xo, 99):.3f} | {pct(xn, 50):.3f} / {pct(xn, 99):.3f} | "
            f"{pct(xs, 50):.3f} | {med('off-main')} | {med('on-off')} | {med('simple-on')} |"
        )
    lines += [
        "",
        f"Spans received from the warm runs (batch and simple together): {warm_spans}, "
        f"in {warm_posts} export requests.",
        "",
        "### Method notes",
        "",
        f"- Machine load (`uptime`: 1, 5, 15-min averages) {load_before[0]:.2f}, "
        f"{load_before[1]:.2f}, {load_before[2]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} (1-min) after; {os.cpu_count()} CPUs shared with other "
        f"work; suite time {time.monotonic() - began:.0f} s"
        f"{' (--quick: fewer rounds, wider spread)' if quick else ''}.",
        "- Reproduce: `make bench SUITES=tracing` (or `.venv/bin/python -m benchmarks "
        "tracing [--quick]`).",
    ]
    return "\n".join(lines)
