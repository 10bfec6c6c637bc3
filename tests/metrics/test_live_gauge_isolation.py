"""A scrape degrades per live gauge, never as a whole (real PostgreSQL).

Bad values (`-infinity`, a BC date that cannot be read in the role's time zone), a
revoked SELECT (a role of the test's own, connecting as it), a missing policy table, a
locked table and a slow reading: `/metrics` answers 200 with the stored counters and
`database_up 1`, the failing family is absent and counted in `live_metric_errors_total`,
and its cause is logged once across scrapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ops.metrics import catalogue as m
from ops.metrics import flush
from tests.support.db import SQL, PgConnect, runner
from tests.support.metrics import Samples, metrics_database, scrape_samples, truncate_metrics, value
from tests.support.runtime import AppEnv, LogLines
from tools.localdb.pgcluster import PgCluster

DAY = 86400.0
ROLE, ROLE_PASSWORD = "gauge_reader", "gauge-reader-pw"


@pytest.fixture(scope="module")
def isolation_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "live_gauge_isolation")


@pytest.fixture
def own_sql(isolation_url: str, pg_connect: PgConnect) -> SQL:
    sql = runner(pg_connect(isolation_url))
    truncate_metrics(sql)
    sql("TRUNCATE inbound_events, chat_sessions")
    return sql


@pytest.fixture
def reader_url(isolation_url: str, own_sql: SQL) -> Iterator[str]:
    """A role of the test's own, with what the metrics function needs on every table."""
    own_sql(f"DROP ROLE IF EXISTS {ROLE}")
    own_sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    own_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ROLE}")
    own_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {ROLE}")
    rest = isolation_url.partition("@")[2]
    yield f"postgresql://{ROLE}:{ROLE_PASSWORD}@{rest}"
    own_sql(f"DROP OWNED BY {ROLE}")
    # The handler's connection is closed by the next reset; terminate it to drop the role.
    own_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")
    own_sql(f"DROP ROLE IF EXISTS {ROLE}")


def _with_a_stored_counter() -> None:
    m.WEBHOOK_FAILURES.labels(source="stripe").inc(3)
    assert flush() is True


def _left_out(log_lines: LogLines) -> list[tuple[str, str]]:
    return [
        (line["gauges"][0], line["reason"])
        for line in log_lines()
        if line.get("type") == "metrics_scrape" and "gauges" in line
    ]


def _families(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def _scrape_twice() -> tuple[Samples, Samples]:
    """Two scrapes, the first's error counts stored in between (its own flush, waited for)."""
    first = scrape_samples()
    assert flush() is True
    return first, scrape_samples()


def _errors(samples: Samples, gauge: str, reason: str) -> float:
    return value(samples, "live_metric_errors_total", family=gauge, reason=reason)


def test_infinite_timestamps_are_ignored_by_the_oldest_row_age(
    isolation_url: str, own_sql: SQL, app_env: AppEnv, log_lines: LogLines
) -> None:
    own_sql(
        "INSERT INTO inbound_events (source, event_type, received_at) VALUES"
        " ('a', 'e', '-infinity'), ('a', 'e', 'infinity'), ('a', 'e', now() - interval '3 days')"
    )
    app_env(DATABASE_URL=isolation_url)
    _with_a_stored_counter()
    samples = scrape_samples()
    assert value(samples, "webhook_failures_total", source="stripe") == 3
    assert value(samples, "database_up") == 1
    age = value(samples, "retention_oldest_row_age_seconds", table="inbound_events")
    assert 3 * DAY <= age < 3 * DAY + 600  # the oldest finite row's age
    assert value(samples, "retention_lag_seconds", table="inbound_events") == 0
    assert "live_metric_errors_total" not in _families(samples)
    assert _left_out(log_lines) == []


def test_a_bc_date_is_its_age_and_an_unreadable_one_costs_only_its_table(
    isolation_url: str, own_sql: SQL, reader_url: str, app_env: AppEnv, log_lines: LogLines
) -> None:
    # East of UTC, the earliest naive timestamp is out of timestamptz's range: 22008.
    own_sql(f"ALTER ROLE {ROLE} SET timezone = 'Asia/Kolkata'")
    own_sql("CREATE TABLE IF NOT EXISTS ancient (at timestamp NOT NULL)")
    own_sql("CREATE INDEX IF NOT EXISTS ancient_at ON ancient (at)")
    own_sql("TRUNCATE ancient")
    own_sql("INSERT INTO ancient VALUES ('4714-11-24 00:00 BC'), ('2020-01-01')")
    own_sql(f"GRANT SELECT ON ancient TO {ROLE}")
    own_sql(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at)"
        " VALUES ('wa', 'u', '0044-03-15 BC')"
    )
    policies = [
        {"table": "ancient", "column": "at", "maxAgeDays": 30},
        {"table": "chat_sessions", "column": "updated_at", "maxAgeDays": 90},
    ]
    app_env(DATABASE_URL=reader_url, RETENTION_POLICIES=json.dumps(policies))
    _with_a_stored_counter()

    first, second = _scrape_twice()
    for samples in (first, second):
        assert value(samples, "webhook_failures_total", source="stripe") == 3
        assert value(samples, "database_up") == 1
        assert ("retention_oldest_row_age_seconds", (("table", "ancient"),)) not in samples
        assert ("retention_lag_seconds", (("table", "ancient"),)) not in samples
        age = value(samples, "retention_oldest_row_age_seconds", table="chat_sessions")
        assert age > 2068 * 365 * DAY  # 44 BC is a true age, not an error
        assert value(samples, "active_sessions") == 0
    gauge = "retention_oldest_row_age_seconds"
    assert _errors(first, gauge, "bad_value") == 0  # shown in the scrape that failed
    assert _errors(second, gauge, "bad_value") == 1
    assert _left_out(log_lines) == [(gauge, "bad_value")]  # once across both scrapes
    (line,) = [x for x in log_lines() if x.get("reason") == "bad_value"]
    assert line["table"] == "ancient" and "22008" in line["error"]


def test_a_revoked_select_costs_only_the_gauges_that_read_the_table(
    isolation_url: str, own_sql: SQL, reader_url: str, app_env: AppEnv, log_lines: LogLines
) -> None:
    own_sql(f"REVOKE SELECT ON inbound_events, chat_sessions FROM {ROLE}")
    app_env(DATABASE_URL=reader_url)  # the default policies: inbound_events, chat_sessions
    _with_a_stored_counter()

    first, second = _scrape_twice()
    for samples in (first, second):
        assert value(samples, "webhook_failures_total", source="stripe") == 3
        assert value(samples, "database_up") == 1
        families = _families(samples)
        assert "active_sessions" not in families  # its statement failed: 42501
        assert "retention_oldest_row_age_seconds" not in families  # the policy check said so
        assert value(samples, "db_connections", state="active") >= 1  # the others are there
        assert value(samples, "pg_settings_max_connections") > 0
    assert _errors(second, "active_sessions", "permission") == 1
    assert _errors(second, "retention_oldest_row_age_seconds", "permission") == 2  # 2 tables
    assert _errors(second, "retention_lag_seconds", "permission") == 2
    assert sorted(_left_out(log_lines)) == [
        ("active_sessions", "permission"),
        ("retention_oldest_row_age_seconds", "permission"),
        ("retention_oldest_row_age_seconds", "permission"),  # one line per table
    ]


def test_a_missing_policy_table_costs_only_its_gauges(
    isolation_url: str, own_sql: SQL, app_env: AppEnv, log_lines: LogLines
) -> None:
    policies = [
        {"table": "no_such_table", "column": "at", "maxAgeDays": 10},
        {"table": "inbound_events", "column": "received_at", "maxAgeDays": 30},
    ]
    own_sql(
        "INSERT INTO inbound_events (source, event_type, received_at)"
        " VALUES ('a', 'e', now() - interval '1 day')"
    )
    app_env(DATABASE_URL=isolation_url, RETENTION_POLICIES=json.dumps(policies))
    _with_a_stored_counter()
    first, second = _scrape_twice()
    for samples in (first, second):
        assert value(samples, "webhook_failures_total", source="stripe") == 3
        assert ("retention_oldest_row_age_seconds", (("table", "no_such_table"),)) not in samples
        assert value(samples, "retention_oldest_row_age_seconds", table="inbound_events") > DAY
    assert _errors(second, "retention_oldest_row_age_seconds", "missing") == 1
    assert _left_out(log_lines) == [("retention_oldest_row_age_seconds", "missing")]


def test_a_locked_table_costs_its_gauge_within_the_budget(
    isolation_url: str, own_sql: SQL, pg_connect: PgConnect, app_env: AppEnv, log_lines: LogLines
) -> None:
    holder = pg_connect(isolation_url)
    holder.run("BEGIN")
    holder.run("LOCK TABLE inbound_events IN ACCESS EXCLUSIVE MODE")
    try:
        app_env(DATABASE_URL=isolation_url, METRICS_SCRAPE_BUDGET_S="2", HEALTH_DB_TIMEOUT_S="1")
        _with_a_stored_counter()
        samples = scrape_samples()
    finally:
        holder.run("ROLLBACK")
    assert value(samples, "database_up") == 1
    assert value(samples, "webhook_failures_total", source="stripe") == 3
    assert ("retention_oldest_row_age_seconds", (("table", "inbound_events"),)) not in samples
    assert ("retention_oldest_row_age_seconds", (("table", "chat_sessions"),)) in samples
    assert _errors(samples, "retention_oldest_row_age_seconds", "timeout") == 0
    assert _left_out(log_lines) == [("retention_oldest_row_age_seconds", "timeout")]


def test_a_slow_reading_costs_its_families_not_the_scrape(
    isolation_url: str,
    own_sql: SQL,
    app_env: AppEnv,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: LogLines,
) -> None:
    from metrics import live_gauges

    slow = live_gauges.STAT_DATABASE_SQL.replace(
        "WHERE d.datname", "CROSS JOIN pg_sleep(30) WHERE d.datname"
    )
    assert slow != live_gauges.STAT_DATABASE_SQL
    monkeypatch.setattr(live_gauges, "STAT_DATABASE_SQL", slow)
    app_env(DATABASE_URL=isolation_url, METRICS_SCRAPE_BUDGET_S="2", HEALTH_DB_TIMEOUT_S="1")
    _with_a_stored_counter()
    samples = scrape_samples()
    assert value(samples, "database_up") == 1
    assert value(samples, "webhook_failures_total", source="stripe") == 3
    assert "pg_stat_database_xact_commit_total" not in _families(samples)
    assert value(samples, "pg_settings_max_connections") > 0
    for family in ("xact_commit", "xact_rollback", "deadlocks"):
        assert _errors(samples, f"pg_stat_database_{family}_total", "timeout") == 0
