"""What a flush says happened, in one process against a real PostgreSQL behind a loopback
proxy (tools.standins.tcp_proxy): a refused connection is `rejected` (nothing sent); at shutdown,
deltas sent without a reply are `unconfirmed`, deltas never stored are `lost`; the
store has a connection of its own; a check's budget ends before the deadline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from ops import deadline
from ops.checks import ANSWER_MARGIN_S, fitted_budget
from ops.metrics import FlushReason, current, flush
from ops.metrics import catalogue as m
from tests.support.db import PgConnect
from tests.support.metrics import metrics_database
from tests.support.runtime import AppEnv, LogLines, call_api, function_handler
from tools.localdb.pgcluster import PgCluster
from tools.runtime.handler import LambdaContext
from tools.standins.tcp_proxy import DelayProxy


@pytest.fixture(scope="module")
def accounting_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_accounting")


@pytest.fixture
def proxy(accounting_url: str) -> Iterator[DelayProxy]:
    where = urlsplit(accounting_url)
    assert where.hostname and where.port
    proxied = DelayProxy((where.hostname, where.port))
    yield proxied
    proxied.close()


def dropped(out: str) -> dict[str, float]:
    """metrics_deltas_dropped by reason, from the EMF lines printed."""
    totals: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith('{"_aws"') and "metrics_deltas_dropped" in line:
            doc = json.loads(line)
            totals[doc["reason"]] = totals.get(doc["reason"], 0) + sum(
                doc["metrics_deltas_dropped"]
            )
    return totals


def flush_logs(log_lines: LogLines) -> list[dict[str, object]]:
    return [line for line in log_lines() if line.get("type") == "metrics_flush"]


def test_a_refused_connection_is_rejected_not_unknown(
    app_env: AppEnv, proxy: DelayProxy, accounting_url: str, log_lines: LogLines
) -> None:
    app_env(DATABASE_URL=proxy.url(accounting_url), POWERTOOLS_METRICS_NAMESPACE="Test")
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc()
    assert flush() is True  # the store's connection is open and kept
    proxy.close()  # the database goes away: the kept connection closed, new ones refused
    counter.inc()
    assert flush() is False
    (failure,) = flush_logs(log_lines)
    assert failure["outcome"] == "rejected", failure
    assert "refused" in str(failure["error"])


def test_deltas_never_sent_are_lost_at_shutdown(
    app_env: AppEnv, closed_port: int, log_lines: LogLines, capsys: pytest.CaptureFixture[str]
) -> None:
    app_env(
        DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{closed_port}/app",
        POWERTOOLS_METRICS_NAMESPACE="Test",
    )
    m.WEBHOOK_FAILURES.labels(source="stripe").inc(3)
    m.WEBHOOK_FAILURES.labels(source="github").inc()
    assert current().flush(FlushReason.SHUTDOWN, budget_s=0.25) is False
    assert dropped(capsys.readouterr().out) == {"lost": 2}
    (lost,) = [line for line in flush_logs(log_lines) if line.get("status") == "lost"]
    assert lost["lostSeries"] == 2 and lost["unconfirmedSeries"] == 0
    assert lost["level"] == "ERROR"


def test_deltas_sent_without_a_reply_are_unconfirmed_at_shutdown(
    app_env: AppEnv,
    proxy: DelayProxy,
    accounting_url: str,
    log_lines: LogLines,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app_env(DATABASE_URL=proxy.url(accounting_url), POWERTOOLS_METRICS_NAMESPACE="Test")
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc()
    assert flush() is True
    capsys.readouterr()
    proxy.vanish()  # the kept connection goes silent...
    proxy.refuse_new()  # ...and no fresh one can be opened
    counter.inc(5)
    assert current().flush(FlushReason.SHUTDOWN, budget_s=0.25) is False
    assert dropped(capsys.readouterr().out) == {"unconfirmed": 1}
    (given_up,) = [line for line in flush_logs(log_lines) if "lostSeries" in line]
    assert given_up["status"] == "unconfirmed"
    assert given_up["lostSeries"] == 0 and given_up["unconfirmedSeries"] == 1


def test_a_dead_idle_connection_is_replaced_within_the_shutdown_budget(
    app_env: AppEnv, proxy: DelayProxy, accounting_url: str, pg_connect: PgConnect
) -> None:
    app_env(DATABASE_URL=proxy.url(accounting_url), POWERTOOLS_METRICS_NAMESPACE="Test")
    counter = m.WEBHOOK_FAILURES.labels(source="dead-idle")
    counter.inc()
    assert flush() is True
    proxy.vanish()  # silent from now on; a new connection works
    counter.inc(4)
    assert current().flush(FlushReason.SHUTDOWN, budget_s=0.25) is True
    conn = pg_connect(accounting_url)
    ((total,),) = conn.run(
        "SELECT sum(v.value) FROM metric_values v JOIN metric_series s ON s.id = v.series_id"
        " WHERE s.family = 'webhook_failures_total' AND s.labels LIKE '%dead-idle%'"
    )
    assert total == 5


def test_checks_and_flushes_use_connections_of_their_own(
    app_env: AppEnv, accounting_url: str, pg_connect: PgConnect
) -> None:
    app_env(DATABASE_URL=accounting_url, METRICS_FLUSH_INTERVAL_S="0")
    health = function_handler("health")
    for path in ("/health/live", "/health/ready", "/health/live"):
        assert call_api(health, path)[0] == 200
    from ops.db import get_db, store_db

    checks = get_db().run("SELECT pg_backend_pid()")[0][0]
    flushes = store_db().run("SELECT pg_backend_pid()")[0][0]
    assert checks != flushes
    conn = pg_connect(accounting_url)
    names = conn.run(
        "SELECT pid, application_name FROM pg_stat_activity WHERE pid IN (:a, :b)",
        a=checks,
        b=flushes,
    )
    assert dict(names) == {checks: "realestate-backend", flushes: "realestate-backend-metrics"}


def test_a_checks_budget_ends_a_margin_before_the_deadline() -> None:
    assert fitted_budget(2.0) == 2.0  # no invocation running: the configured budget
    deadline.begin(LambdaContext("f", 0.3))
    try:
        assert fitted_budget(2.0) <= 0.3 - ANSWER_MARGIN_S
        assert fitted_budget(0.1) == 0.1  # a budget that fits is kept
    finally:
        deadline.end()
    deadline.begin(LambdaContext("f", 0.01))
    try:
        assert 0 < fitted_budget(2.0) <= 0.01  # no time left: it gives up at once
    finally:
        deadline.end()
