"""What tracing (OpenTelemetry) costs (issue 21): each function with it off and on, in one run.

Off is the default and costs nothing by construction: nothing of OpenTelemetry is
imported (tests/api/test_tracing.py checks every function). On, the price is the SDK's
import and set-up in every cold start and, per invocation, the spans plus their export
before the invocation returns (a BatchSpanProcessor force-flushed at the end: one POST per
invocation). "On" points OTEL_EXPORTER_OTLP_ENDPOINT at a loopback OTLP receiver
(tools.standins.otlp_receiver), which also counts the spans. Processes: benchmarks.off_on.
"""

from __future__ import annotations

from benchmarks.lambda_procs import FULL, QUICK, WORK
from benchmarks.lambda_variants import (
    apigw_event,
    bench_python,
    build_variants,
    code_under_test,
    database,
    route_event,
)
from benchmarks.off_on import Case, WarmPairs, cold_pairs, pair, section
from tools.standins.otlp_receiver import otlp_receiver

HERE = WORK / "tracing"
FUNCTIONS = ("health", "metrics", "retention")
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
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
    cold_note = (
        f"Spans the receiver got from the {len(pairs) * plan.cold_rounds} cold processes "
        f"with tracing on: {cold_spans}."
    )
    warm_note = f"Spans received from the warm runs: {warm_spans}, in {warm_posts} export requests."
    return section(
        plan,
        tested,
        (pairs, cold, errors, cold_note),
        (cases, warm, " of the health function", warm_note),
    )
