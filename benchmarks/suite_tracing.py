"""What tracing (OpenTelemetry) costs (issue 21): each function with it off and on, in one run.

Off is the default and costs nothing by construction: nothing of OpenTelemetry is
imported (tests/api/test_tracing.py checks every function). On, the price is the SDK's
import and set-up in every cold start and, per invocation, the spans plus their export
before the invocation returns (a BatchSpanProcessor force-flushed at the end: one POST per
invocation). "On" points OTEL_EXPORTER_OTLP_ENDPOINT at a loopback OTLP receiver
(tools.standins.otlp_receiver), which also counts the spans. Processes: benchmarks.off_on.
"""

from __future__ import annotations

import os
import time

from benchmarks.lambda_procs import FULL, QUICK, WORK
from benchmarks.lambda_variants import (
    apigw_event,
    bench_python,
    build_variants,
    code_under_test,
    database,
    route_event,
)
from benchmarks.off_on import Case, WarmPairs, cold_pairs, cold_table, pair, warm_table
from tools.standins.otlp_receiver import otlp_receiver

HERE = WORK / "tracing"
FUNCTIONS = ("health", "metrics", "retention")
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    began, load_before = time.monotonic(), os.getloadavg()
    tested = code_under_test()
    python = bench_python()
    with database() as url, otlp_receiver() as receiver:
        base = build_variants(url)
        on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        sampled = {"_X_AMZN_TRACE_ID": TRACE_HEADER}
        pairs = {name: pair(base[name], on, sampled) for name in FUNCTIONS}
        cold, errors = cold_pairs(python, pairs, plan)
        cold_spans = len(receiver.spans())
        # The last one without its token: a 401, counted in auth_failures_total.
        events = {
            "/health/live": route_event("/health/live"),
            "/health": route_event("/health"),
            "/health/detailed": route_event("/health/detailed"),
            "/health/detailed (401)": apigw_event("/health/detailed", Accept="application/json"),
        }
        cases: dict[str, Case] = {r: (*pairs["health"], e) for r, e in events.items()}
        warm = WarmPairs(python, cases, plan, HERE / "logs", before_timed=receiver.clear)
        warm_spans, warm_posts = len(receiver.spans()), len(receiver.exports)
    total = plan.warm_rounds * plan.warm_batch
    return "\n".join(
        [
            "## Tracing (OpenTelemetry): cost with it off and on (issue 21)",
            "",
            f"Code under test: {tested}. Each function imported as Lambda imports it "
            "(`benchmarks.lambda_procs`: `.venv-bench`'s interpreter, `DATABASE_URL` to a "
            "throwaway PostgreSQL, `_X_AMZN_TRACE_ID` set with `Sampled=1`): with no OTEL_* "
            "setting (off, the default: nothing of OpenTelemetry is imported) and with "
            "`OTEL_TRACES_EXPORTER=otlp` and `OTEL_EXPORTER_OTLP_ENDPOINT` at a loopback "
            "OTLP/HTTP receiver (on).",
            "",
            f"### Cold start ({plan.cold_rounds} rounds of fresh processes, variants alternating)",
            "",
            *cold_table(pairs, cold, errors),
            "",
            f"Spans the receiver got from the {len(pairs) * plan.cold_rounds} cold processes "
            f"with tracing on: {cold_spans}.",
            "",
            f"### Warm invocations of the health function ({plan.warmup} discarded, then "
            f"{plan.warm_rounds} rounds x {plan.warm_batch} per route and variant = {total} "
            "samples each, interleaved)",
            "",
            "Timed: the handler call, spans' export included when on (loopback receiver; to "
            "X-Ray in-region add the round trip and the SigV4 signing, bounded at 1 s).",
            "",
            *warm_table(cases, warm),
            "",
            f"Spans received from the warm runs: {warm_spans}, in {warm_posts} export requests.",
            "",
            f"Machine load (`uptime`: 1, 5, 15-min averages) {load_before[0]:.2f}, "
            f"{load_before[1]:.2f}, {load_before[2]:.2f} before, {os.getloadavg()[0]:.2f} "
            f"(1-min) after; {os.cpu_count()} CPUs shared with other work; suite time "
            f"{time.monotonic() - began:.0f} s{' (--quick: fewer rounds)' if quick else ''}.",
        ]
    )
