"""The flush policy in one process (a "container"): what each kind of invocation sends
and when, EMF on every invocation, the deadline flush, dropped batches reported as
dropped, and stale cursors that no longer block a new container's flush.

Process-level behaviour (exit, SIGTERM, the Lambda extension, a hung database) is in
test_metrics_shutdown.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ops.api import Request, Response, json_response
from ops.metrics import catalogue as m
from ops.metrics import current, flush, store
from ops.wiring import service_api
from tests.support.db import SQL, PgConnect
from tests.support.metrics import (
    emf_lines,
    emptied_store,
    metrics_database,
    scrape_samples,
    value,
)
from tests.support.runtime import AppEnv, Handler, LogLines, call_api, function_handler
from tools.localdb.pgcluster import PgCluster
from tools.runtime.handler import LambdaContext


@pytest.fixture(scope="module")
def policy_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_policy")


@pytest.fixture
def own_sql(policy_url: str, pg_connect: PgConnect) -> SQL:
    return emptied_store(pg_connect(policy_url, timeout_s=30))


@pytest.fixture
def metrics_env(policy_url: str, own_sql: SQL, app_env: AppEnv) -> str:
    app_env(DATABASE_URL=policy_url, METRICS_NEW_SERIES_HOLD_S="0")  # scrapes show values
    return policy_url


def stored_requests(sql: SQL, route: str) -> float:
    rows = sql(
        "SELECT coalesce(sum(v.value), 0) FROM metric_values v JOIN metric_series s "
        "ON s.id = v.series_id WHERE s.family = 'http_requests_total' AND s.labels LIKE :l",
        l=f'%route="{route}"%',
    )
    return float(rows[0][0])


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the container's connection runs: "flush", "SELECT 1" or the SQL."""
    from ops.db import Database

    seen: list[str] = []
    real_run = Database.run

    def run(self: Database, sql: str, **kwargs: Any) -> list[list[Any]]:
        seen.append("flush" if "metrics_flush(" in sql else sql)
        return real_run(self, sql, **kwargs)

    monkeypatch.setattr(Database, "run", run)
    return seen


def test_a_database_check_carries_the_pending_deltas_in_its_own_round_trip(
    metrics_env: str, own_sql: SQL, statements: list[str]
) -> None:
    health = function_handler("health")
    for _ in range(3):
        assert call_api(health, "/health")[0] == 200
    # The first check of a new container has nothing to carry; then each check is the flush.
    assert statements == ["SELECT 1", "flush", "flush"]
    assert stored_requests(own_sql, "/health") == 2  # the third rides with the next flush
    assert flush()
    assert stored_requests(own_sql, "/health") == 3


def test_liveness_hands_its_flush_to_the_background(metrics_env: str, own_sql: SQL) -> None:
    assert call_api(function_handler("health"), "/health/live")[0] == 200
    assert current().outbox.wait_idle(10)
    assert stored_requests(own_sql, "/health/live") == 1


def test_liveness_never_waits_on_a_hung_database(app_env: AppEnv, blackhole: int) -> None:
    app_env(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{blackhole}/app")
    health = function_handler("health")
    for _ in range(5):
        started = time.perf_counter()
        assert call_api(health, "/health/live")[0] == 200
        assert time.perf_counter() - started < 0.5  # the hung flush is the flush thread's problem
    assert current().outbox.in_flight is not None  # still trying, in the background


def api_with_work_route() -> Handler:
    """An API function with an ordinary route (one that waits for its flush)."""
    app = service_api()

    @app.get("/work")
    def work(req: Request) -> Response:
        m.TOOL_CALLS.labels(tool="work", status="ok").inc()
        pause = float(req.query.get("sleep", "0"))
        if pause:
            time.sleep(pause)
        return json_response(200, {"ok": True})

    return app.lambda_handler


def test_interval_zero_stores_every_invocation(metrics_env: str, own_sql: SQL) -> None:
    handler = api_with_work_route()
    for n in (1, 2):
        assert call_api(handler, "/work")[0] == 200
        assert stored_requests(own_sql, "/work") == n


def test_with_an_interval_deltas_wait_until_the_oldest_is_that_old(
    metrics_env: str, own_sql: SQL, app_env: AppEnv
) -> None:
    app_env(METRICS_FLUSH_INTERVAL_S="0.5")
    handler = api_with_work_route()
    assert call_api(handler, "/work")[0] == 200  # a new container's first call: at once
    assert stored_requests(own_sql, "/work") == 1
    assert call_api(handler, "/work")[0] == 200
    time.sleep(0.3)
    assert call_api(handler, "/work")[0] == 200
    assert stored_requests(own_sql, "/work") == 1  # pending: the oldest is younger than 0.5 s
    time.sleep(0.3)
    assert call_api(handler, "/work")[0] == 200  # the oldest is now due: all of them go
    assert stored_requests(own_sql, "/work") == 4


def test_with_an_interval_a_call_after_a_quiet_spell_is_stored_at_once(
    metrics_env: str, own_sql: SQL, app_env: AppEnv
) -> None:
    app_env(METRICS_FLUSH_INTERVAL_S="0.5")
    handler = api_with_work_route()
    for _ in range(3):  # a busy spell: the first call (a new container's) goes at once
        assert call_api(handler, "/work")[0] == 200
    assert stored_requests(own_sql, "/work") == 1
    time.sleep(0.6)  # quiet: a frozen Lambda container would hold the two for minutes...
    assert call_api(handler, "/work")[0] == 200  # ...so the next call sends them with its own
    assert stored_requests(own_sql, "/work") == 4


def test_a_flush_goes_out_before_the_deadline(
    metrics_env: str, own_sql: SQL, app_env: AppEnv
) -> None:
    app_env(METRICS_FLUSH_TIMEOUT_MS="100", METRICS_FLUSH_INTERVAL_S="3600")  # margin 0.2 s
    handler = api_with_work_route()
    assert call_api(handler, "/work")[0] == 200  # a new container's first call: stored at once
    event_context = LambdaContext("work", 0.6)
    from tools.runtime.apigw import proxy_event

    event = proxy_event(method="GET", path="/work", resource="/work", query="sleep=0.55")
    assert handler(event, event_context)["statusCode"] == 200
    # The invocation recorded its tool call, then ran into its deadline margin: the
    # watchdog handed the pending deltas over before the 0.6 s were up.
    rows = own_sql(
        "SELECT coalesce(sum(v.value), 0) FROM metric_values v JOIN metric_series s "
        "ON s.id = v.series_id WHERE s.family = 'tool_calls_total'"
    )
    deadline = time.monotonic() + 5
    while rows[0][0] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = own_sql(
            "SELECT coalesce(sum(v.value), 0) FROM metric_values v JOIN metric_series s "
            "ON s.id = v.series_id WHERE s.family = 'tool_calls_total'"
        )
    assert rows[0][0] == 2
    assert stored_requests(own_sql, "/work") == 1  # the second: recorded after the deadline flush


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready"])
def test_emf_goes_out_on_every_invocation_with_the_database_down(
    app_env: AppEnv, closed_port: int, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    app_env(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{closed_port}/app")
    health = function_handler("health")
    capsys.readouterr()
    for _ in range(3):
        call_api(health, path)
        lines = emf_lines(capsys.readouterr().out)
        assert any("health_probe_requests" in line for line in lines), lines
        if path != "/health/live":
            assert [line["health_check_failures"] for line in lines if "check" in line] == [[1.0]]


def test_dropped_batches_are_counted_and_logged_as_dropped(
    metrics_env: str,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: LogLines,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ops.db import Database

    def reply_lost(self: Database, sql: str, **kwargs: Any) -> list[list[Any]]:
        raise ConnectionResetError("no reply")  # after sending: the outcome is unknown

    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    with monkeypatch.context() as patch:
        patch.setattr(store, "MAX_SEALED_BATCHES", 2)
        patch.setattr(Database, "run", reply_lost)
        for _ in range(4):
            counter.inc()
            assert flush() is False
    assert [b.sealed for b in current().outbox.batches] == [True, True]
    lines = [line for line in log_lines() if line.get("type") == "metrics_flush"]
    dropped = [line for line in lines if line.get("status") == "dropped"]
    assert [d["droppedBatches"] for d in dropped] == [1, 1]
    assert all("kept" not in d["message"] and "dropped" in d["message"] for d in dropped)
    dropped_series = sum(d["droppedSeries"] for d in dropped)  # the failure counts ride too
    emf = emf_lines(capsys.readouterr().out)
    assert sum(sum(line.get("metrics_deltas_dropped", [])) for line in emf) == dropped_series

    assert flush() is True  # the database answers again: the count reaches the store too
    samples = scrape_samples()
    dropped_total = value(
        samples, "metrics_deltas_dropped_total", function="local", reason="unconfirmed"
    )
    assert dropped_total == dropped_series
    assert value(samples, "webhook_failures_total", source="stripe") == 2  # the kept batches


def test_stale_cursors_do_not_block_a_new_containers_flush(metrics_env: str, own_sql: SQL) -> None:
    from ops.db import get_db
    from ops.metrics import totals

    own_sql(
        "INSERT INTO metric_flush_cursors (container, seq, prev, seen_at) "
        "SELECT 'gone-' || g, 1, 0, now() - interval '2 days' FROM generate_series(1, 250000) g"
    )
    m.WEBHOOK_FAILURES.labels(source="stripe").inc()
    assert flush() is True  # a new container's first flush, with 250,000 stale cursors
    assert value(scrape_samples(), "webhook_failures_total", source="stripe") == 1
    # Housekeeping, off the flush path (the scrape above ran some): bounded batches.
    while totals.prune_cursors(get_db(), budget_s=0.0) == totals.PRUNE_BATCH:
        pass
    ((left,),) = own_sql("SELECT count(*) FROM metric_flush_cursors WHERE container LIKE 'gone-%'")
    assert left == 0
