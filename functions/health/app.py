"""Health endpoints: /health, /health/live, /health/ready, /health/detailed."""

from __future__ import annotations

from ops.api import Request, Response, json_response
from ops.checks import CheckResult, configured_checks, database_check, run_checks
from ops.config import settings
from ops.timestamps import utc_now
from ops.wiring import service_api

HEALTH_JSON = "application/health+json"

app = service_api()


# Health routes never wait on the database for the metrics flush: the database check
# carries the due deltas in its own round trip (no extra write per probe), and where
# there is no check (liveness, a 401) the flush goes in the background. Each route
# therefore answers within its check budget whatever the database does.
@app.get("/health", latency_critical=True)
def health(_: Request) -> Response:
    (db,) = run_checks([database_check()])
    if db.ok:
        return json_response(200, {"status": "ok", "db": "connected"})
    return json_response(503, {"status": "error", "db": "disconnected"})


@app.get("/health/live", latency_critical=True)
def live(_: Request) -> Response:
    cfg = settings()
    return json_response(
        200,
        {"status": "ok", "service": cfg.service, "version": cfg.version, "timestamp": utc_now()},
    )


@app.get("/health/ready", latency_critical=True)
def ready(_: Request) -> Response:
    results = run_checks([c for c in configured_checks() if c.critical])
    is_ready = all(r.ok for r in results)
    body = {
        "status": "ready" if is_ready else "not_ready",
        "timestamp": utc_now(),
        "checks": {r.name: r.as_json() for r in results},
    }
    return json_response(200 if is_ready else 503, body)


def _health_json(results: list[CheckResult], healthy: bool, details: bool) -> dict[str, object]:
    """draft-inadarei-api-health-check: pass|warn|fail, checks keyed component:measurement."""
    cfg = settings()
    critical_down = any(not r.ok and r.critical for r in results)
    status = "pass" if healthy else ("fail" if critical_down else "warn")
    checks = {
        f"{r.name}:responseTime": [
            {
                "componentType": r.component_type,
                "observedValue": round(r.latency_ms, 3),
                "observedUnit": "ms",
                "status": "pass" if r.ok else "fail",
                "time": utc_now(),
                **({} if r.ok else {"output": r.error if details and r.error else r.reason}),
            }
        ]
        for r in results
    }
    return {
        "status": status,
        "version": cfg.version.split(".")[0],
        "releaseId": cfg.version,
        "serviceId": cfg.service,
        "description": f"{cfg.service} health",
        "checks": checks,
    }


@app.get("/health/detailed", auth=True, latency_critical=True)
def detailed(req: Request) -> Response:
    results = run_checks(configured_checks())
    healthy = all(r.ok for r in results)
    status = 200 if healthy else 503
    cfg = settings()
    # The driver's message names hosts and users: only for callers who presented the token.
    details = cfg.auth_configured
    if HEALTH_JSON in (req.header("accept") or ""):
        body = _health_json(results, healthy, details)
        return json_response(status, body, content_type=HEALTH_JSON)
    body = {
        "status": "ok" if healthy else "degraded",
        "service": cfg.service,
        "version": cfg.version,
        "timestamp": utc_now(),
        "checks": {r.name: r.as_json(details=details) for r in results},
    }
    return json_response(status, body)


lambda_handler = app.lambda_handler
