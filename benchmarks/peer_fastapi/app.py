"""Benchmark-only peer (c): the health routes written the way many teams would.

FastAPI + Mangum + prometheus-fastapi-instrumentator in one Lambda, with the same
four routes and JSON response shapes as `functions/health` (not the
`application/health+json` form of `/health/detailed`: the suite asks for JSON) and a
database check over pg8000 (one lazily opened connection per container, reused,
dropped on error, a socket timeout, no TLS on loopback). `/metrics` is the instrumentator's
in-memory registry. Not deployed; `benchmarks/suite_health.py` imports it as
Lambda would (`app.handler`, this folder on sys.path).

`handler = Mangum(app)` is the form the Mangum and FastAPI tutorials show; it
runs the ASGI lifespan on every invocation (the tuned form, `lifespan="off"`, was
measured once: benchmarks/README.md, *Concluded investigations*).
"""

from __future__ import annotations

import hmac
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pg8000.native
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from mangum import Mangum
from prometheus_fastapi_instrumentator import Instrumentator

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "realestate-backend"
VERSION = os.environ.get("SERVICE_VERSION") or "0.1.0"
DB_TIMEOUT_S = float(os.environ.get("HEALTH_DB_TIMEOUT_S") or 2.0)
TOKEN = os.environ.get("METRICS_AUTH_TOKEN") or None

app = FastAPI(title=SERVICE, version=VERSION)
Instrumentator().instrument(app).expose(app)

_conn: pg8000.native.Connection | None = None


def _connect() -> pg8000.native.Connection:
    url = urlsplit(os.environ["DATABASE_URL"])
    return pg8000.native.Connection(
        user=unquote(url.username or "postgres"),
        password=unquote(url.password) if url.password else None,
        host=url.hostname or "localhost",
        port=url.port or 5432,
        database=url.path.lstrip("/") or "postgres",
        timeout=DB_TIMEOUT_S,
        ssl_context=False,
    )


def check_database() -> dict[str, Any]:
    global _conn
    started = time.perf_counter()
    try:
        if _conn is None:
            _conn = _connect()
        _conn.run("SELECT 1")
        result: dict[str, Any] = {"status": "up"}
    except Exception as exc:
        _conn = None
        result = {"status": "down", "error": str(exc) or type(exc).__name__}
    result["latencyMs"] = round((time.perf_counter() - started) * 1000.0, 3)
    return result


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@app.get("/health")
def health() -> JSONResponse:
    if check_database()["status"] == "up":
        return JSONResponse({"status": "ok", "db": "connected"})
    return JSONResponse({"status": "error", "db": "disconnected"}, status_code=503)


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok", "service": SERVICE, "version": VERSION, "timestamp": _now()}


@app.get("/health/ready")
def ready() -> JSONResponse:
    checks = {"database": check_database()}
    ok = all(c["status"] == "up" for c in checks.values())
    body = {"status": "ready" if ok else "not_ready", "timestamp": _now(), "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@app.get("/health/detailed")
def detailed(authorization: str | None = Header(default=None)) -> JSONResponse:
    if TOKEN is not None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), TOKEN.encode()
        ):
            return JSONResponse(
                {"error": "unauthorized", "message": "a valid bearer token is required"},
                status_code=401,
            )
    checks = {"database": check_database()}
    ok = all(c["status"] == "up" for c in checks.values())
    status = 200 if ok else 503
    body = {
        "status": "ok" if ok else "degraded",
        "service": SERVICE,
        "version": VERSION,
        "timestamp": _now(),
        "checks": checks,
    }
    return JSONResponse(body, status_code=status)


handler = Mangum(app)
