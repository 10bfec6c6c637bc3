"""Health endpoints against a real PostgreSQL: healthy, down, hung, restarted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.db import SQL
from tests.support.runtime import FunctionInvoker
from tools.localdb.pgcluster import running_cluster
from tools.standins.loopback import serving


def test_health_ok_when_database_answers(db_env: str, health_api: FunctionInvoker) -> None:
    status, headers, body = health_api("/health")
    assert (status, body) == (200, {"status": "ok", "db": "connected"})
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"


def test_live_needs_nothing(
    health_api: FunctionInvoker, app_env: Callable[..., None], closed_port: int
) -> None:
    app_env(DATABASE_URL=f"postgresql://u:p@127.0.0.1:{closed_port}/db")
    app_env(SERVICE_VERSION="1.2.3")
    status, _, body = health_api("/health/live")
    assert status == 200
    assert body["status"] == "ok"
    assert body["service"] == "realestate-backend"
    assert body["version"] == "1.2.3"
    assert body["timestamp"].endswith("Z")


def test_ready_reports_each_critical_check(db_env: str, health_api: FunctionInvoker) -> None:
    status, _, body = health_api("/health/ready")
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["database"]["latencyMs"] >= 0


def test_detailed_ok_and_degraded_with_optional_http_dependency(
    db_env: str, health_api: FunctionInvoker, app_env: Callable[..., None], closed_port: int
) -> None:
    status, _, body = health_api("/health/detailed")
    assert status == 200 and body["status"] == "ok"
    assert set(body["checks"]) == {"database"}

    app_env(MOLTBOT_GATEWAY_URL=f"http://127.0.0.1:{closed_port}")
    status, _, body = health_api("/health/detailed")
    assert status == 503
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["moltbot"]["status"] == "down"
    assert body["checks"]["moltbot"]["reason"] == "refused"
    assert "error" not in body["checks"]["moltbot"]  # no token configured: no details

    app_env(METRICS_AUTH_TOKEN="t0k")  # behind a token, the details are there
    status, _, body = health_api("/health/detailed", headers={"Authorization": "Bearer t0k"})
    assert status == 503
    assert body["checks"]["moltbot"]["error"]


def test_detailed_http_dependency_up(
    db_env: str, health_api: FunctionInvoker, app_env: Callable[..., None]
) -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(HTTPServer(("127.0.0.1", 0), Ok)) as srv:
        app_env(MOLTBOT_GATEWAY_URL=f"http://127.0.0.1:{srv.server_port}/")
        status, _, body = health_api("/health/detailed")
        assert status == 200
        assert body["checks"]["moltbot"]["status"] == "up"


def test_detailed_speaks_health_json(db_env: str, health_api: FunctionInvoker) -> None:
    status, headers, body = health_api(
        "/health/detailed", headers={"Accept": "application/health+json"}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/health+json"
    assert body["status"] == "pass"
    assert body["serviceId"] == "realestate-backend"
    (db,) = body["checks"]["database:responseTime"]
    assert db["componentType"] == "datastore"
    assert db["observedUnit"] == "ms" and db["status"] == "pass"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic c2VjcmV0", "Bearer "])
def test_detailed_requires_token_when_configured(
    db_env: str, health_api: FunctionInvoker, app_env: Callable[..., None], auth: str | None
) -> None:
    app_env(METRICS_AUTH_TOKEN="s3cret-token")
    headers = {"Authorization": auth} if auth else {}
    status, resp_headers, body = health_api("/health/detailed", headers=headers)
    assert status == 401
    assert body["error"] == "unauthorized"
    assert resp_headers["WWW-Authenticate"].startswith("Bearer")


def test_detailed_accepts_the_right_token(
    db_env: str, health_api: FunctionInvoker, app_env: Callable[..., None]
) -> None:
    app_env(METRICS_AUTH_TOKEN="s3cret-token")
    status, _, _ = health_api("/health/detailed", headers={"Authorization": "Bearer s3cret-token"})
    assert status == 200


def test_refused_connection_is_503_fast(
    health_api: FunctionInvoker, app_env: Callable[..., None], closed_port: int
) -> None:
    app_env(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{closed_port}/app")
    for path, expected in [
        ("/health", {"status": "error", "db": "disconnected"}),
        ("/health/ready", None),
        ("/health/detailed", None),
    ]:
        status, _, body = health_api(path)
        assert status == 503, path
        if expected:
            assert body == expected
    _, _, body = health_api("/health/ready")
    assert body["status"] == "not_ready"
    assert body["checks"]["database"]["status"] == "down"


def test_hung_database_turns_into_503_within_budget(
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    blackhole: int,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    app_env(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{blackhole}/app")
    app_env(HEALTH_DB_TIMEOUT_S="0.5")
    app_env(DB_CONNECT_TIMEOUT_S="30")  # the check's budget must win
    started = time.monotonic()
    status, _, body = health_api("/health/ready")
    elapsed = time.monotonic() - started
    assert status == 503
    assert body["checks"]["database"]["reason"] == "timeout"
    (failed,) = [x for x in log_lines() if x.get("type") == "health_check"]
    assert "timed out" in failed["error"] and failed["reason"] == "timeout"
    # Functional bound, not a benchmark: far below the 30 s socket timeout and API Gateway's 29 s.
    assert elapsed < 10


def test_database_stopped_then_restarted_between_invocations(
    health_api: FunctionInvoker, app_env: Callable[..., None]
) -> None:
    with running_cluster() as cluster:
        # No metrics flush due: every check is a SELECT 1 on the checks' own connection.
        app_env(DATABASE_URL=cluster.url(), METRICS_FLUSH_INTERVAL_S="600")
        assert health_api("/health")[0] == 200
        from ops.db import get_db

        first = get_db().connection()

        cluster.stop()
        assert health_api("/health")[0] == 503

        cluster.start()
        cluster.wait_ready()
        assert health_api("/health")[0] == 200
        assert get_db().connection() is not first

        # A restart while the container is frozen: the kept connection is stale,
        # the next call reopens it once and answers 200 without a failed request.
        kept = get_db().connection()
        cluster.restart()
        cluster.wait_ready()
        assert health_api("/health")[0] == 200
        assert get_db().connection() is not kept


def test_connection_is_reused_across_invocations(
    db_env: str, health_api: FunctionInvoker, sql: SQL
) -> None:
    health_api("/health")
    from ops.db import get_db

    conn = get_db().connection()
    for _ in range(5):
        health_api("/health")
    assert get_db().connection() is conn
    pid = get_db().run("SELECT pg_backend_pid()")[0][0]
    app = sql("SELECT application_name FROM pg_stat_activity WHERE pid = :p", p=pid)
    assert app == [["realestate-backend"]]


def test_statement_timeout_is_set_on_the_connection(
    db_env: str, app_env: Callable[..., None]
) -> None:
    app_env(DB_STATEMENT_TIMEOUT_MS="250")
    from ops.db import get_db

    assert get_db().run("SHOW statement_timeout") == [["250ms"]]
