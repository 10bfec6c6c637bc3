"""GET /metrics: authentication, 503 with the database down, content negotiation,
exposition validity (prometheus_client's parsers; promtool: test_promtool_metrics.py),
HTTP and health-check instrumentation, gauges read at scrape time, and a real
Prometheus scraping it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ops.metrics import catalogue as m
from ops.metrics import flush, totals
from tests.support.db import SQL, PgConnect, runner
from tests.support.metrics import (
    TOKEN,
    metrics_database,
    parse,
    scrape,
    scrape_samples,
    truncate_metrics,
    value,
)
from tests.support.prometheus import get, local_gateway, prometheus
from tests.support.runtime import AppEnv, LogLines, call_api, function_handler
from tools.localdb.pgcluster import PgCluster
from tools.runtime.handler import LambdaContext
from tools.standins.loopback import serving

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
DAY = 86400.0
DURATION = "http_request_duration_seconds"


@pytest.fixture(scope="module")
def endpoint_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_endpoint")


@pytest.fixture
def own_sql(endpoint_url: str, pg_connect: PgConnect) -> SQL:
    return runner(pg_connect(endpoint_url))


@pytest.fixture
def metrics_env(endpoint_url: str, own_sql: SQL, app_env: AppEnv) -> str:
    truncate_metrics(own_sql)
    app_env(DATABASE_URL=endpoint_url)
    return endpoint_url


# -- authentication and availability ---------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer nope", f"Basic {TOKEN}", "Bearer"])
def test_a_missing_or_wrong_token_is_401(
    metrics_env: str, app_env: AppEnv, authorization: str | None
) -> None:
    app_env(METRICS_AUTH_TOKEN=TOKEN)
    status, headers, body = scrape({"Authorization": authorization} if authorization else {})
    assert status == 401
    assert body["error"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_the_right_token_gets_the_exposition(metrics_env: str, app_env: AppEnv) -> None:
    app_env(METRICS_AUTH_TOKEN=TOKEN)
    status, headers, body = scrape({"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert headers["Content-Type"] == TEXT
    assert "# TYPE http_requests_total counter" in body


def test_head_metrics_is_the_scrapes_status_and_headers_without_a_body(
    metrics_env: str, app_env: AppEnv
) -> None:
    app_env(METRICS_AUTH_TOKEN=TOKEN)
    handler = function_handler("metrics")
    status, headers, body = call_api(handler, "/metrics", method="HEAD")
    assert status == 401 and body == "" and headers["WWW-Authenticate"].startswith("Bearer")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = call_api(handler, "/metrics", method="HEAD", headers=auth)
    assert (status, headers["Content-Type"], body) == (200, TEXT, "")
    flush()  # the HEADs' flushes run on the flush thread; the scrape never waits for them
    samples = parse(call_api(handler, "/metrics", headers=auth)[2])
    for code in ("401", "200"):  # counted as HEAD, not OTHER
        count = value(samples, "http_requests_total", method="HEAD", route="/metrics", status=code)
        assert count == 1, code


STORED_FAMILIES = ("http_requests_total", "retention_run_duration_seconds", "webhook_failures")


def _request_line(log_lines: LogLines) -> dict[str, Any]:
    (line,) = [x for x in log_lines() if x.get("type") == "request" and x["url"] == "/metrics"]
    return line


@pytest.mark.parametrize("where", ["refused", "hung"])
def test_database_down_is_200_with_what_the_scrape_can_measure(
    app_env: AppEnv, closed_port: int, blackhole: int, log_lines: LogLines, where: str
) -> None:
    port = closed_port if where == "refused" else blackhole
    app_env(
        DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{port}/app",
        HEALTH_DB_TIMEOUT_S="0.5",
        MOLTBOT_GATEWAY_URL=f"http://127.0.0.1:{closed_port}",
    )
    status, headers, body = scrape()
    assert status == 200 and headers["Content-Type"] == TEXT
    samples = parse(body)
    assert value(samples, "database_up") == 0
    assert value(samples, "health_check_status", check="database") == 0
    assert value(samples, "health_check_status", check="moltbot") == 0  # measured all the same
    latency = value(samples, "health_check_latency_seconds", check="database")
    assert 0 <= latency <= 0.5 + 0.25
    # No stored family has a sample: not a partial exposition, not a made-up zero
    # (an unlabelled counter at 0 and back would read as a reset).
    assert not [k for k in samples if k[0].startswith(STORED_FAMILIES)]
    assert "# TYPE http_requests_total counter" in body
    # The handler's own time (flush excluded) stays within the check's budget.
    assert _request_line(log_lines)["duration"] < 500 + 250


def test_a_database_that_hangs_mid_scrape_costs_the_scrape_budget_only(
    metrics_env: str, app_env: AppEnv, monkeypatch: pytest.MonkeyPatch, log_lines: LogLines
) -> None:
    app_env(METRICS_SCRAPE_BUDGET_S="1", HEALTH_DB_TIMEOUT_S="0.5")
    values_sql = totals.VALUES_SQL
    hung = values_sql.replace("now())::text, 0\n", "now())::text, 0 FROM pg_sleep(30)\n")
    assert hung != values_sql
    monkeypatch.setattr(totals, "VALUES_SQL", hung)
    status, _, body = scrape()
    assert status == 200
    samples = parse(body)
    assert value(samples, "database_up") == 0  # the check passed; the store did not answer
    assert value(samples, "health_check_status", check="database") == 1
    assert _request_line(log_lines)["duration"] < 1000 + 500
    (failed,) = [x for x in log_lines() if x.get("type") == "metrics_scrape"]
    assert "scrape budget" in failed["error"]
    # (Not monkeypatch.undo(): that would also unset DATABASE_URL.)
    monkeypatch.setattr(totals, "VALUES_SQL", values_sql)
    assert value(scrape_samples(), "database_up") == 1  # the next scrape connects afresh


def test_a_failing_store_query_is_503(metrics_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(totals, "VALUES_SQL", "SELECT * FROM no_such_table")
    status, _, body = scrape()
    assert status == 503 and body["error"] == "metrics_unavailable"


# -- the exposition ---------------------------------------------------------------------


def _record_one_of_everything() -> None:
    m.HTTP_REQUESTS.labels(method="GET", route="/listings/{id}", status="200").inc(3)
    m.HTTP_REQUEST_DURATION.labels(method="GET", route="/listings/{id}").observe(0.042)
    m.WEBHOOK_FAILURES.labels(source='weird "source"\\').inc()
    m.TOOL_CALLS.labels(tool="search", status="error").inc()
    m.TOOL_CALL_DURATION.labels(tool="search").observe(1.5)
    m.PAIRING_FAILURES.labels(channel="whatsapp").inc()
    m.DB_QUERY_DURATION.labels(operation="listing_by_id").observe(0.0032)
    m.HEALTH_CHECK_FAILURES.labels(check="database").inc()
    m.HEALTH_CHECK_DURATION.labels(check="database").observe(0.0025)
    m.METRICS_FLUSH_FAILURES.labels(function="webhooks").inc()
    m.ERRORS.labels(function="webhooks", kind="unhandled_exception").inc()
    m.RETENTION_ROWS_DELETED.labels(table="inbound_events").inc(1000)
    m.RETENTION_RUN_DURATION.observe(12.5)
    m.RETENTION_RUNS.labels(status="succeeded").inc()
    assert flush() is True


def test_openmetrics_when_the_scraper_asks_for_it(metrics_env: str) -> None:
    _record_one_of_everything()
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    status, headers, body = scrape({"Accept": prometheus_accept})
    assert status == 200 and headers["Content-Type"] == OPENMETRICS
    assert body.endswith("# EOF\n")
    assert "# TYPE webhook_failures counter\n" in body
    om = parse(body, openmetrics=True)
    status, headers, body = scrape({"Accept": "text/plain;version=0.0.4"})
    assert status == 200 and headers["Content-Type"] == TEXT
    assert "# EOF" not in body
    text = parse(body)
    for samples in (om, text):
        assert value(samples, "webhook_failures_total", source='weird "source"\\') == 1
        assert value(samples, "tool_call_duration_seconds_bucket", tool="search", le="1.0") == 0
        assert value(samples, "tool_call_duration_seconds_bucket", tool="search", le="2.0") == 1
        assert value(samples, "retention_runs_total", status="succeeded") == 1
        assert value(samples, "retention_run_duration_seconds_sum") == 12.5


# -- instrumentation --------------------------------------------------------------------


def test_every_response_is_recorded_errors_included(
    metrics_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    health = function_handler("health")
    call_api(health, "/health/live")
    call_api(health, "/no/such/path", resource="/{proxy+}")
    call_api(health, "/health", method="POST")

    def boom() -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr("health.app.configured_checks", boom)
    call_api(health, "/health/ready")
    assert health({"not": "an API Gateway event"}, LambdaContext("health", 5))["statusCode"] == 400

    samples = scrape_samples()
    expected = {
        ("GET", "/health/live", "200"),
        ("GET", "unmatched", "404"),
        ("POST", "/health", "405"),
        ("GET", "/health/ready", "500"),
        ("OTHER", "unmatched", "400"),
    }
    for method, route, status in expected:
        assert value(samples, "http_requests_total", method=method, route=route, status=status) == 1
        assert value(samples, f"{DURATION}_count", method=method, route=route) == 1
    assert value(samples, "errors_total", function="local", kind="unhandled_exception") == 1
    assert value(samples, "errors_total", function="local", kind="malformed_event") == 1
    assert not any(dict(labels).get("route") == "/no/such/path" for _, labels in samples)


def test_health_checks_record_failures_and_latency(
    metrics_env: str, app_env: AppEnv, closed_port: int
) -> None:
    app_env(MOLTBOT_GATEWAY_URL=f"http://127.0.0.1:{closed_port}")
    status, _, _ = call_api(function_handler("health"), "/health/detailed")
    assert status == 503  # the optional dependency is down
    samples = scrape_samples()  # the scrape ran both checks too
    assert value(samples, "health_check_failures_total", check="database") == 0
    assert value(samples, "health_check_failures_total", check="moltbot") == 1
    assert value(samples, "health_check_duration_seconds_count", check="database") == 1
    assert value(samples, "health_check_duration_seconds_count", check="moltbot") == 1


# -- measured at scrape time ------------------------------------------------------------


def test_database_up_is_in_every_scrape(metrics_env: str) -> None:
    for _ in range(3):
        samples = scrape_samples()
        assert value(samples, "database_up") == 1
        assert value(samples, "health_check_status", check="database") == 1
        assert value(samples, "health_check_latency_seconds", check="database") >= 0


def test_dependency_status_is_current_and_goes_when_the_dependency_goes(
    metrics_env: str, app_env: AppEnv
) -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Gateway(BaseHTTPRequestHandler):
        healthy = False

        def do_GET(self) -> None:
            self.send_response(200 if Gateway.healthy else 503)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    with serving(HTTPServer(("127.0.0.1", 0), Gateway)) as srv:
        app_env(MOLTBOT_GATEWAY_URL=f"http://127.0.0.1:{srv.server_port}")
        assert value(scrape_samples(), "health_check_status", check="moltbot") == 0
        Gateway.healthy = True  # fixed: the very next scrape says so
        assert value(scrape_samples(), "health_check_status", check="moltbot") == 1
        Gateway.healthy = False
        assert value(scrape_samples(), "health_check_status", check="moltbot") == 0
        app_env(MOLTBOT_GATEWAY_URL="")  # removed: no status at all, so no alert
        samples = scrape_samples()
        assert not [k for k in samples if ("check", "moltbot") in k[1] and "status" in k[0]]


def test_a_new_counter_series_is_exposed_at_zero_before_its_value(
    metrics_env: str, app_env: AppEnv, own_sql: SQL
) -> None:
    app_env(METRICS_NEW_SERIES_HOLD_S="60")
    m.HTTP_REQUESTS.labels(method="GET", route="/listings", status="503").inc(7)
    m.HTTP_REQUEST_DURATION.labels(method="GET", route="/listings").observe(0.042)
    m.RETENTION_MISSING_INDEX.labels(table="events").set(1)  # a gauge is its value at once
    assert flush() is True
    five_o_three = {"method": "GET", "route": "/listings", "status": "503"}
    samples = scrape_samples()
    assert value(samples, "http_requests_total", **five_o_three) == 0
    assert value(samples, f"{DURATION}_count", method="GET", route="/listings") == 0
    assert value(samples, f"{DURATION}_sum", method="GET", route="/listings") == 0
    assert value(samples, "retention_missing_index", table="events") == 1
    own_sql("UPDATE metric_series SET created_at = now() - interval '61 seconds'")
    totals.reset()  # a metrics container that has not cached the series' birth yet
    samples = scrape_samples()
    assert value(samples, "http_requests_total", **five_o_three) == 7
    assert value(samples, f"{DURATION}_count", method="GET", route="/listings") == 1
    # A new bucket of a histogram Prometheus already has is a plain increase: not held.
    m.HTTP_REQUEST_DURATION.labels(method="GET", route="/listings").observe(4.0)
    assert flush() is True
    samples = scrape_samples()
    assert value(samples, f"{DURATION}_count", method="GET", route="/listings") == 2


# -- gauges read at scrape time ---------------------------------------------------------


def test_live_gauges(metrics_env: str, own_sql: SQL, app_env: AppEnv, log_lines: LogLines) -> None:
    own_sql("TRUNCATE chat_sessions")
    own_sql(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) SELECT 'wa', 'u' || a, now() - a"
        " FROM unnest(ARRAY[interval '1 minute', '5 minutes', '20 minutes', '2 days']) AS a"
    )
    own_sql("CREATE TABLE IF NOT EXISTS gauge_events (at timestamptz NOT NULL, note text)")
    own_sql("CREATE INDEX IF NOT EXISTS gauge_events_at ON gauge_events (at)")
    own_sql("TRUNCATE gauge_events")
    own_sql("INSERT INTO gauge_events (at) VALUES (now() - interval '20 days'), (now())")
    own_sql(
        "INSERT INTO audit_logs (occurred_at, actor_type, actor_id, action, entity, payload) VALUES"
        " (now() - interval '2 days', 'system', 'retention-job', 'retention.prune', 'gauge_events',"
        '  \'{"completed": true, "deleted": 5}\'),'
        " (now() - interval '1 day', 'system', 'retention-job', 'retention.prune', 'gauge_events',"
        '  \'{"completed": true, "dryRun": true}\'),'
        " (now() - interval '1 hour', 'system', 'retention-job', 'retention.prune', 'gauge_events',"
        "  '{\"completed\": false}'),"
        " (now(), 'system', 'retention-job', 'retention.other', 'gauge_events',"
        "  '{\"completed\": true}')"
    )
    ((last_success,),) = own_sql(
        "SELECT extract(epoch FROM max(occurred_at))::float8 FROM audit_logs"
        " WHERE entity = 'gauge_events' AND payload->>'deleted' = '5'"
    )
    policies = [
        {"table": "gauge_events", "column": "at", "maxAgeDays": 10},
        {"table": "chat_sessions", "column": "updated_at", "maxAgeDays": 90},
        {"table": "no_such_table", "column": "at", "maxAgeDays": 10},
        {"table": "gauge_events_copy", "column": "at", "maxAgeDays": 10},
    ]
    own_sql("CREATE TABLE IF NOT EXISTS gauge_events_copy (at timestamptz)")  # no index
    app_env(RETENTION_POLICIES=json.dumps(policies))

    samples = scrape_samples()
    assert value(samples, "active_sessions") == 2  # within the default 15 minutes
    age = value(samples, "retention_oldest_row_age_seconds", table="gauge_events")
    assert 20 * DAY <= age < 20 * DAY + 600
    lag = value(samples, "retention_lag_seconds", table="gauge_events")
    assert lag == pytest.approx(age - 10 * DAY)
    assert value(samples, "retention_lag_seconds", table="chat_sessions") == 0
    assert value(samples, "retention_last_success_timestamp_seconds", table="gauge_events") == (
        pytest.approx(last_success)
    )
    # No completed prune of chat_sessions yet: absent, not a made-up zero.
    assert (
        "retention_last_success_timestamp_seconds",
        (("table", "chat_sessions"),),
    ) not in samples
    assert value(samples, "db_connections", state="active") >= 1
    assert value(samples, "db_connections", state="idle in transaction") >= 0
    for table in ("no_such_table", "gauge_events_copy"):
        assert ("retention_lag_seconds", (("table", table),)) not in samples
    skipped = [line for line in log_lines() if line.get("type") == "metrics_scrape"]
    assert [(line["table"], line["reason"]) for line in skipped] == [
        ("no_such_table", "missing"),
        ("gauge_events_copy", "unsupported"),  # no index: min() would scan the table
    ]
    for reason in ("missing", "unsupported"):
        errors = value(
            samples,
            "live_metric_errors_total",
            family="retention_oldest_row_age_seconds",
            reason=reason,
        )
        assert errors == 0  # in this scrape already; a new series starts at 0

    assert flush() is True  # what the scrape's own background flush does, waited for
    samples = scrape_samples()
    errors = value(
        samples, "live_metric_errors_total", family="retention_lag_seconds", reason="unsupported"
    )
    assert errors == 1  # the first scrape's, stored by its flush
    assert len([x for x in log_lines() if x.get("type") == "metrics_scrape"]) == 2  # once

    app_env(ACTIVE_SESSION_WINDOW_MINUTES="30")
    assert value(scrape_samples(), "active_sessions") == 3


def test_invalid_retention_policies_cost_only_the_retention_gauges(
    metrics_env: str, app_env: AppEnv, log_lines: LogLines
) -> None:
    app_env(
        RETENTION_POLICIES='[{"table": "audit_logs", "column": "occurred_at", "maxAgeDays": 1}]'
    )
    samples = scrape_samples()
    assert "active_sessions" in {name for name, _ in samples}
    assert not any(name.startswith("retention_lag") for name, _ in samples)
    (error,) = [line for line in log_lines() if line.get("type") == "metrics_scrape"]
    assert error["level"] == "ERROR" and "never pruned" in error["error"]


def test_a_bad_session_window_is_a_clear_error(metrics_env: str, app_env: AppEnv) -> None:
    app_env(ACTIVE_SESSION_WINDOW_MINUTES="fifteen")
    status, _, body = scrape()
    assert status == 500 and body["error"] == "internal_error"


# -- a real Prometheus ------------------------------------------------------------------


@pytest.mark.slow
def test_prometheus_scrapes_the_local_gateway(metrics_env: str) -> None:
    env = {"DATABASE_URL": metrics_env, "METRICS_AUTH_TOKEN": TOKEN}
    with local_gateway(env) as base:
        jobs = [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": token},
                "static_configs": [{"targets": [base.removeprefix("http://")]}],
            }
            for job, token in (("bundle", TOKEN), ("bundle-wrong-token", "not-the-token"))
        ]
        with prometheus(jobs) as prom:
            for _ in range(3):
                assert get(f"{base}/health/detailed", TOKEN)[0] == 200
            detailed = 'http_requests_total{job="bundle",route="/health/detailed",status="200"}'

            def scraped() -> dict[str, Any] | None:
                up = {s["metric"]["job"]: s["value"][1] for s in prom.query("up")}
                found = prom.query(detailed)
                return {"up": up, "live": found} if found and len(up) == 2 else None

            found = prom.wait_for("both jobs scraped, /health/detailed counted", scraped, 90)
    assert found["up"] == {"bundle": "1", "bundle-wrong-token": "0"}, found
    ((sample,),) = [found["live"]]
    assert sample["value"][1] == "3"
    assert sample["metric"]["method"] == "GET"
