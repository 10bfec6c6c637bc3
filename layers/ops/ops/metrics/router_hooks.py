"""The metrics' hooks in the router (`ops.api.Api`) and the checks, wired by ops.wiring:
every response recorded, then the active container's flush by the policy
(FlushReason.DUE), the deadline watch and the shutdown flush (ops.metrics.process_hooks);
each health check's result recorded, and the database check carrying the due flush in
its round trip (FlushReason.PROBE).

Every response is counted: 2xx to 5xx, 404 for unknown paths (route "unmatched"), 405,
400 for malformed events and 500 for handler exceptions alike. `route` is always the
route template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ops.metrics import catalogue as m
from ops.metrics import process_hooks
from ops.metrics.catalogue import function_name
from ops.metrics.container import FlushReason, current

if TYPE_CHECKING:
    from ops.api import Api, Request
    from ops.checks import CheckResult

# Anything else (API Gateway forwards only these) would be an unbounded label.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def record_response(req: Request | None, route: str, status: int, duration_ms: float) -> None:
    method = req.method if req is not None and req.method in KNOWN_METHODS else "OTHER"
    m.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    m.HTTP_REQUEST_DURATION.labels(method=method, route=route).observe(duration_ms / 1000.0)
    kind = "malformed_event" if req is None else "unhandled_exception" if status == 500 else None
    if kind is not None:
        # Api answers 500 only when a handler raised, and has no request when the event was bad.
        m.ERRORS.labels(function=function_name(), kind=kind).inc()


def instrument(app: Api) -> None:
    """Record every response; flush by the policy after each invocation, in the
    background on latency-critical routes."""
    process_hooks.install()  # at init: Lambda accepts extension registrations only then
    background = False

    def on_response(req: Request | None, route: str, status: int, duration_ms: float) -> None:
        nonlocal background
        record_response(req, route, status, duration_ms)
        background = req is not None and app.is_latency_critical(req.method, route)

    def after_invocation() -> None:
        process_hooks.end_invocation()
        current().flush(FlushReason.DUE, background=background)

    app.before_invocation.append(process_hooks.begin_invocation)
    app.response_hooks.append(on_response)
    app.after_invocation.append(after_invocation)


def record_check(result: CheckResult) -> None:
    """A health check's result (ops.checks' result hook): its failure count (0 when up, so
    that the series exists) and its latency."""
    m.HEALTH_CHECK_FAILURES.labels(check=result.name).inc(0.0 if result.ok else 1.0)
    m.HEALTH_CHECK_DURATION.labels(check=result.name).observe(result.latency_seconds)


class CarriedFlush:
    """The database check's round trip carries the active container's due flush
    (ops.checks.RoundTrip; FlushReason.PROBE)."""

    def carry(self, budget_s: float) -> bool:
        return current().flush(FlushReason.PROBE, budget_s=budget_s)

    def abandon(self) -> bool:
        return current().abandon_probe()
