"""The database's own performance, read live at scrape time, on a real PostgreSQL with
pg_stat_statements loaded (a cluster of this module's own: `shared_preload_libraries`
needs a server start, and a small `max_connections` lets a test reach its limit).

The embedded binaries and Debian's postgresql-15 both ship the extension; where it is
missing the tests skip locally and fail in CI (tests.support.binaries).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pg8000.native
import pytest

from ops.db import connect_url
from ops.metrics import catalogue as m
from tests.support.binaries import require_binary, require_pg_library
from tests.support.db import PgConnect
from tests.support.metrics import (
    TOKEN,
    Samples,
    metrics_database,
    parse,
    scrape,
    scrape_samples,
    value,
)
from tests.support.prometheus import local_gateway, prometheus, shipped_alert_rules
from tests.support.runtime import AppEnv
from tools import ROOT
from tools.localdb.pgcluster import PgCluster, default_bindir, running_cluster

MAX_CONNECTIONS = 20
TOP_N = m.PG_STATEMENTS_TOP_N


@pytest.fixture(scope="module")
def stats_cluster() -> Iterator[PgCluster]:
    require_pg_library(default_bindir(), "pg_stat_statements", "postgresql-15")
    with running_cluster(
        shared_preload_libraries="pg_stat_statements", max_connections=str(MAX_CONNECTIONS)
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def stats_url(stats_cluster: PgCluster) -> str:
    url = metrics_database(stats_cluster, "database_gauges")
    conn = connect_url(url, timeout_s=10)
    try:
        conn.run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        conn.close()
    return url


@pytest.fixture
def stats_env(stats_url: str, app_env: AppEnv) -> str:
    app_env(DATABASE_URL=stats_url)
    return stats_url


def _series(samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["queryid"]: v for (n, labels), v in samples.items() if n == name}


def test_slow_statements_appear_in_the_top_n_by_queryid_only(
    stats_env: str, pg_connect: PgConnect
) -> None:
    conn = pg_connect(stats_env)
    conn.run("SELECT pg_stat_statements_reset()")
    for i in range(TOP_N + 5):  # more distinct statements than the top N
        conn.run(f"SELECT {i} AS c{i}, pg_sleep(0.001)")
    for _ in range(2):
        conn.run("SELECT pg_sleep(0.25) AS the_slow_one")
    ((queryid,),) = conn.run(
        "SELECT queryid::text FROM pg_stat_statements WHERE query LIKE '%the_slow_one%'"
    )
    status, _, body = scrape({"Accept": "text/plain"})
    assert status == 200, body
    samples = parse(body)
    means = _series(samples, "pg_stat_statements_mean_seconds")
    assert len(means) == TOP_N  # bounded, whatever the workload
    assert max(means, key=means.__getitem__) == queryid  # the slowest mean first
    assert means[queryid] >= 0.25
    assert _series(samples, "pg_stat_statements_calls_total")[queryid] == 2
    assert _series(samples, "pg_stat_statements_seconds_total")[queryid] >= 0.5
    assert "the_slow_one" not in body and "pg_sleep" not in body  # never the text
    assert "# TYPE pg_stat_statements_calls_total counter" in body
    proc = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr  # base units, _total, HELP
    assert not (proc.stdout + proc.stderr).strip()


def test_a_held_transaction_and_a_running_query_raise_their_ages(
    stats_env: str, pg_connect: PgConnect
) -> None:
    holder = pg_connect(stats_env)
    holder.run("BEGIN")
    holder.run("SELECT txid_current()")  # a transaction with an id, as a writer holds
    runner = pg_connect(stats_env)
    sleeper = threading.Thread(target=runner.run, args=("SELECT pg_sleep(4)",), daemon=True)
    sleeper.start()
    time.sleep(1.5)
    samples = scrape_samples()
    held = value(samples, "pg_oldest_transaction_age_seconds")
    assert held >= 1.5
    assert value(samples, "pg_longest_query_duration_seconds") >= 1.4
    holder.run("COMMIT")
    sleeper.join(10)
    after = scrape_samples()
    assert value(after, "pg_oldest_transaction_age_seconds") < held
    assert value(after, "pg_longest_query_duration_seconds") < 1.4


def _deadlock(url: str) -> list[str]:
    """Two sessions lock two rows in opposite orders; PostgreSQL cancels one (40P01).
    Returns the SQLSTATEs raised. The sessions end (and report their statistics)."""
    first, second = connect_url(url, timeout_s=30), connect_url(url, timeout_s=30)
    raised: list[str] = []

    def update(conn: pg8000.native.Connection, row: int) -> None:
        try:
            conn.run(f"UPDATE deadlock_pair SET n = n + 1 WHERE id = {row}")
        except pg8000.native.DatabaseError as exc:
            raised.append(str(exc.args[0].get("C")))

    try:
        for conn, row in ((first, 1), (second, 2)):
            conn.run("BEGIN")
            update(conn, row)
        crossing = threading.Thread(target=update, args=(first, 2), daemon=True)
        crossing.start()
        time.sleep(0.2)  # first waits on row 2; second now closes the cycle
        update(second, 1)
        crossing.join(30)
        for conn in (first, second):
            conn.run("ROLLBACK")
    finally:
        first.close()
        second.close()
    return raised


def test_a_deadlock_between_two_sessions_is_counted(stats_env: str, pg_connect: PgConnect) -> None:
    sql = pg_connect(stats_env)
    sql.run("CREATE TABLE IF NOT EXISTS deadlock_pair (id int PRIMARY KEY, n int NOT NULL)")
    sql.run("INSERT INTO deadlock_pair VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING")
    before = scrape_samples()
    assert _deadlock(stats_env) == ["40P01"]

    def counted() -> Samples | None:
        samples = scrape_samples()
        deadlocks = value(samples, "pg_stat_database_deadlocks_total")
        return samples if deadlocks > value(before, "pg_stat_database_deadlocks_total") else None

    # Backends report statistics when they end or go idle, at most once a second.
    after = _poll("the deadlock in pg_stat_database", counted, 30)
    assert value(after, "pg_stat_database_deadlocks_total") == (
        value(before, "pg_stat_database_deadlocks_total") + 1
    )
    rollbacks = "pg_stat_database_xact_rollback_total"
    assert value(after, rollbacks) >= value(before, rollbacks) + 2  # both rolled back
    assert value(after, "pg_stat_database_xact_commit_total") >= value(
        before, "pg_stat_database_xact_commit_total"
    )


T = TypeVar("T")


def _poll(what: str, found: Callable[[], T | None], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = found()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout_s:g}s: {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_connections_near_max_connections_fire_the_warning_in_prometheus(
    stats_url: str, pg_connect: PgConnect
) -> None:
    env = {
        "DATABASE_URL": stats_url,
        "METRICS_AUTH_TOKEN": TOKEN,
        "HEALTH_DB_TIMEOUT_S": "0.5",
        "METRICS_SCRAPE_BUDGET_S": "0.9",  # within Prometheus' 1 s scrape timeout
    }
    job: dict[str, Any] = {
        "job_name": "realestate-backend",
        "metrics_path": "/metrics",
        "authorization": {"type": "Bearer", "credentials": TOKEN},
    }
    alert = 'ALERTS{alertname="DatabaseConnectionsHigh",alertstate="firing",severity="%s"}'
    in_use = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    with local_gateway(env) as base:
        job["static_configs"] = [{"targets": [base.removeprefix("http://")]}]
        with prometheus([job], shipped_alert_rules()) as prom:
            prom.wait_for(
                "pg_connections_in_use scraped",
                lambda: prom.value("pg_connections_in_use") is not None,
                60,
            )
            assert prom.query(alert % "warning") == []
            watcher = pg_connect(stats_url)
            held = []
            # 17 of 20: above 80%, below 95% (superuser: the reserved slots are ours too).
            while watcher.run(in_use)[0][0] < int(MAX_CONNECTIONS * 0.85):
                held.append(pg_connect(stats_url))
            fired = prom.wait_for("the warning fired", lambda: prom.query(alert % "warning"), 60)
            ratio = prom.value("pg_connections_in_use / pg_settings_max_connections")
            assert ratio is not None and 0.8 < ratio <= 0.95, ratio
            assert prom.query(alert % "critical") == []
    assert fired[0]["metric"]["severity"] == "warning"
    assert len(held) > 0


def test_the_docs_state_the_catalogues_top_n() -> None:
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    runbook = (ROOT / "infra" / "monitoring" / "README.md").read_text()
    claim = f"installed, the {TOP_N} statements with the highest mean"
    assert claim in " ".join(metrics_doc.split())
    assert f"mean execution time of the {TOP_N} statements" in runbook
    assert f"`PG_STATEMENTS_TOP_N` ({TOP_N}) statements" in runbook
