"""What error tracking (Sentry) costs (issue 12): each function with it off and on, in one run.

Off is the default and costs nothing by construction: without a DSN the SDK is never
imported (tests/api/test_error_tracking.py checks it). On, the price is the SDK's import
and init in every cold start, nothing on a successful invocation, and a capture plus a
flush (the report leaves before the invocation returns) on a failing one. "On" points
SENTRY_DSN at a loopback HTTP server standing in for Sentry's ingest (tools.standins.sentry_ingest),
which also counts the events it receives. Processes: benchmarks.off_on.
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.lambda_procs import FULL, QUICK, WORK, Variant
from benchmarks.lambda_variants import (
    bench_python,
    build_variants,
    code_under_test,
    database,
    route_event,
)
from benchmarks.off_on import Case, WarmPairs, cold_pairs, pair, section
from tools import LAYER_DIR
from tools.runtime.apigw import proxy_event
from tools.standins.sentry_ingest import sentry_ingest

HERE = WORK / "error_tracking"
FUNCTIONS = ("health", "metrics", "retention")
# An API function of the bundle's shape with a route that raises: the router's 500 path.
FAILING_APP = """from ops.wiring import service_api

app = service_api()


@app.get("/fail")
def fail(req):
    raise RuntimeError("the handler failed")


lambda_handler = app.lambda_handler
"""


def _failing_function(base: Variant) -> Variant:
    code_dir = HERE / "failing"
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "app.py").write_text(FAILING_APP)
    return replace(
        base,
        key="failing",
        paths=(str(code_dir), str(LAYER_DIR)),
        handler="app.lambda_handler",
        event=proxy_event(method="GET", path="/fail", resource="/fail"),
        cwd=str(code_dir),
    )


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    tested = code_under_test()
    python = bench_python()
    with database() as url, sentry_ingest() as ingest:
        base = build_variants(url)
        dsn = {"SENTRY_DSN": ingest.dsn}
        pairs = {name: pair(base[name], dsn) for name in FUNCTIONS}
        cold, errors = cold_pairs(python, pairs, plan)
        cold_events = len(ingest.events())
        failing_off, failing_on = pair(_failing_function(base["health"]), dsn)
        cases: dict[str, Case] = {
            "/health/live": (*pairs["health"], route_event("/health/live")),
            "/health": (*pairs["health"], route_event("/health")),
            "/fail (500)": (failing_off, failing_on, failing_on.event or {}),
        }
        warm = WarmPairs(python, cases, plan, HERE / "logs", before_timed=ingest.clear)
        failures = plan.warm_rounds * plan.warm_batch
        warm_events = len(ingest.wait_for_events(failures, timeout_s=10))
    cold_note = (
        f"Events the ingest received from the {len(pairs) * plan.cold_rounds} cold "
        f"processes with Sentry on (each invocation succeeded): {cold_events}."
    )
    warm_note = (
        f"Failing invocations with Sentry on: {failures}; events received: {warm_events} "
        "(one per failure, each sent before its invocation returned)."
    )
    return section(plan, tested, (pairs, cold, errors, cold_note), (cases, warm, "", warm_note))
