"""Gauges read from the database at scrape time, when their value is a fact about now.

* `active_sessions`: chat sessions updated within ACTIVE_SESSION_WINDOW_MINUTES (15).
* `db_connections{state}`: this database's client connections by state.
* `retention_last_success_timestamp_seconds{table}`: the newest completed,
  non-dry-run `retention.prune` audit entry per policy table (absent before the first).
* `retention_oldest_row_age_seconds{table}` and `retention_lag_seconds{table}`
  (the age beyond the policy's maximum, never negative), per policy table.
* The database's own performance, as postgres_exporter shows it: client connections to
  the server against `max_connections`, this database's commits, rollbacks and deadlocks
  (counters, from pg_stat_database), the age of its oldest open transaction and of its
  longest running statement, and, when pg_stat_statements is installed, the
  PG_STATEMENTS_TOP_N statements with the highest mean time (their mean, calls and total
  time), by `queryid` only: never a query's text.

Each reading degrades alone. The readings go out as two simple-protocol statements
(UNION ALL, one round trip each; the second needs the first's catalog answers). When
one of them fails, its readings are retried one statement each (autocommit: a failure
ends only its own statement), and a reading that failed runs alone at the container's
next scrape (a broken gauge costs one more round trip per scrape, not a failed batch and
a retry of each). So a bad value, a missing grant or table, or a timeout costs that
family's samples in that scrape, never the scrape: the family is left out, counted
(`live_metric_errors_total{family,reason}`) and its cause logged once per container.
Causes the catalog can tell are found before they fail: a policy table or column that
is missing, not a timestamp, not leading an index (min() would be a sequential scan) or
not readable by the role costs no failed statement.

Every statement carries statement and lock timeouts cut from what is left of the
scrape's budget (and below the socket timeout), so a locked table or a slow view costs
its family (`timeout`), not `database_up`.

Oldest-row ages ignore non-finite values (`col > '-infinity' AND col < 'infinity'`,
still one index probe): the age is the oldest finite row's. A `-infinity` row is older
than every cutoff, so retention deletes it at its next run. A timestamp that cannot be
read in the session's time zone (`4714-11-24 BC` east of UTC) is `bad_value`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pg8000.exceptions import DatabaseError

from ops.config import settings
from ops.db import Database, is_stale_error
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics.families import REGISTRY, LiveGauge
from ops.retention_policies import Policy, PolicyError, load_policies
from ops.sql import quote_ident, quote_literal, server_message, set_local_timeouts, sqlstate

CONNECTION_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")

# SQLSTATE -> reason (the closed set of live_metric_errors_total's `reason`); class 22
# (data exception) is bad_value, anything else `error`.
_REASONS = {
    "42501": "permission",
    "42P01": "missing",  # undefined table
    "42703": "missing",  # undefined column
    "42883": "missing",  # undefined function
    "3F000": "missing",  # invalid schema name
    "57014": "timeout",  # statement timeout
    "55P03": "timeout",  # lock timeout
}
# The policy check's verdicts (0: readable).
_POLICY_REASONS = {1: "missing", 2: "unsupported", 3: "permission"}
_BATCH_SHARE = 0.5  # of the time left, for the batched attempt; the rest for retries


class Reading(NamedTuple):
    """One SELECT of (family or control kind, label value, value) rows, text/text/float8."""

    families: tuple[str, ...]  # each is left out, and counted, when it fails
    sql: str
    subject: str = ""  # a policy table, for the log


@dataclass
class Failure:
    reading: Reading
    reason: str
    error: str


@dataclass
class Collected:
    live: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (family, reason)


def _text_array(values: list[str]) -> str:
    return f"ARRAY[{', '.join(quote_literal(v) for v in values)}]::text[]"


def window_minutes() -> int:
    return settings().active_session_window_minutes


def _ident(name: str) -> str:
    """A policy's `schema.table` or column, each part quoted."""
    return ".".join(quote_ident(part) for part in name.split("."))


def _first_readings(policies: list[Policy]) -> list[Reading]:
    tables = _text_array([p.table for p in policies])
    readings = [
        Reading(
            (m.ACTIVE_SESSIONS.name,),
            "SELECT 'active_sessions'::text, ''::text, count(*)::float8 FROM chat_sessions"
            f" WHERE updated_at >= now() - make_interval(mins => {window_minutes()})",
        ),
        Reading(
            (m.DB_CONNECTIONS.name,),
            "SELECT 'db_connections', coalesce(state, 'unknown'), count(*)::float8"
            " FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend' GROUP BY 2",
        ),
        Reading(
            (
                m.PG_CONNECTIONS_IN_USE.name,
                m.PG_MAX_CONNECTIONS.name,
                m.PG_OLDEST_TRANSACTION.name,
                m.PG_LONGEST_QUERY.name,
            ),
            ACTIVITY_SQL,
        ),
        Reading(
            (m.PG_XACT_COMMIT.name, m.PG_XACT_ROLLBACK.name, m.PG_DEADLOCKS.name),
            STAT_DATABASE_SQL,
        ),
        Reading(
            (m.PG_STATEMENT_MEAN.name, m.PG_STATEMENT_CALLS.name, m.PG_STATEMENT_SECONDS.name),
            STATEMENTS_PRESENT_SQL,
        ),
    ]
    if policies:
        readings.append(
            Reading((m.RETENTION_LAST_SUCCESS.name,), LAST_SUCCESS_SQL.format(tables=tables))
        )
        columns = _text_array([p.column for p in policies])
        readings.append(
            Reading(
                (m.RETENTION_OLDEST_ROW_AGE.name, m.RETENTION_LAG.name),
                POLICY_CHECK_SQL.format(tables=tables, columns=columns),
            )
        )
    return readings


# Whole server for connections (max_connections is the server's); this database for the
# ages, our own connection left out. A statement that started after ours reads as 0.
ACTIVITY_SQL = """
SELECT r.k, '', r.v FROM (
    SELECT count(*) FILTER (WHERE backend_type = 'client backend')::float8 AS in_use,
           max(now() - xact_start) FILTER (WHERE mine) AS tx,
           max(now() - query_start) FILTER (WHERE mine AND state = 'active') AS q
    FROM (SELECT *, datname = current_database() AND backend_type = 'client backend'
                    AND pid <> pg_backend_pid() AS mine
          FROM pg_stat_activity) AS s
) AS a
CROSS JOIN LATERAL (VALUES
    ('pg_connections_in_use', a.in_use),
    ('pg_settings_max_connections', current_setting('max_connections')::float8),
    ('pg_oldest_transaction_age_seconds', greatest(extract(epoch FROM a.tx), 0)::float8),
    ('pg_longest_query_duration_seconds', greatest(extract(epoch FROM a.q), 0)::float8)
) AS r(k, v)"""

STAT_DATABASE_SQL = """
SELECT r.k, '', r.v FROM pg_stat_database AS d
CROSS JOIN LATERAL (VALUES
    ('pg_stat_database_xact_commit_total', d.xact_commit::float8),
    ('pg_stat_database_xact_rollback_total', d.xact_rollback::float8),
    ('pg_stat_database_deadlocks_total', d.deadlocks::float8)
) AS r(k, v)
WHERE d.datname = current_database()"""

# The extension's schema, when installed: 1 when its view has mean_exec_time (1.8+,
# PostgreSQL 13+), 0 for an older version (left out as `unsupported`).
STATEMENTS_PRESENT_SQL = """
SELECT '.statements', quote_ident(n.nspname), (EXISTS (
    SELECT 1 FROM pg_attribute AS a
    WHERE a.attrelid = to_regclass(quote_ident(n.nspname) || '.pg_stat_statements')
      AND a.attname = 'mean_exec_time'))::int::float8
FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements'"""

# One row per queryid (a statement run by several roles, or nested, has several entries),
# for the top N by mean: mean, calls and total time, in seconds. Never the query text.
STATEMENTS_TOP_SQL = """
SELECT r.k, t.queryid::text, r.v FROM (
    SELECT queryid, sum(calls)::float8 AS calls, (sum(total_exec_time) / 1000)::float8 AS total
    FROM {schema}.pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND queryid IS NOT NULL
    GROUP BY queryid HAVING sum(calls) > 0
    ORDER BY sum(total_exec_time) / sum(calls) DESC LIMIT {top}
) AS t
CROSS JOIN LATERAL (VALUES
    ('pg_stat_statements_mean_seconds', t.total / t.calls),
    ('pg_stat_statements_calls_total', t.calls),
    ('pg_stat_statements_seconds_total', t.total)
) AS r(k, v)"""

LAST_SUCCESS_SQL = """
SELECT 'retention_last_success_timestamp_seconds', p.tbl, extract(epoch FROM a.occurred_at)::float8
FROM unnest({tables}) AS p(tbl)
CROSS JOIN LATERAL (
    SELECT occurred_at FROM audit_logs
    WHERE entity = p.tbl AND action = 'retention.prune'
      AND payload->>'completed' = 'true'
      AND coalesce(payload->>'dryRun', 'false') = 'false'
    ORDER BY occurred_at DESC LIMIT 1) AS a"""

# Per policy table: 0 readable; 1 table or column missing; 2 not a timestamp or not
# leading an index; 3 no SELECT on the column (a table grant counts).
POLICY_CHECK_SQL = """
SELECT '.policy', p.tbl, CASE
    WHEN c.oid IS NULL OR a.attnum IS NULL THEN 1
    WHEN a.atttypid NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
      OR NOT EXISTS (
          SELECT 1 FROM pg_index AS i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum)
      THEN 2
    WHEN NOT has_column_privilege(c.oid, a.attnum, 'SELECT') THEN 3
    ELSE 0 END::float8
FROM unnest({tables}, {columns}) AS p(tbl, col)
LEFT JOIN pg_class AS c ON c.oid = to_regclass(p.tbl)
LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = p.col AND NOT a.attisdropped"""


def _age_reading(policy: Policy) -> Reading:
    col = _ident(policy.column)
    return Reading(
        (m.RETENTION_OLDEST_ROW_AGE.name, m.RETENTION_LAG.name),
        f"SELECT 'retention_oldest_row_age_seconds', {quote_literal(policy.table)},"
        f" coalesce(extract(epoch FROM now() - min({col})), 0)::float8"
        f" FROM {_ident(policy.table)} WHERE {col} > '-infinity' AND {col} < 'infinity'",
        policy.table,
    )


def _policies() -> list[Policy]:
    # A bad RETENTION_POLICIES costs the retention gauges, not the whole scrape.
    try:
        return load_policies()
    except PolicyError as exc:
        if _first_time(("retention", "policies", str(exc))):
            logger.error(
                "retention gauges skipped: invalid retention policies",
                extra={"type": "metrics_scrape", "error": str(exc)},
            )
        return []


# -- running readings, each failure isolated ---------------------------------------------


def _timeouts(deadline: float, share: float) -> str | None:
    """SET LOCAL statement and lock timeouts for a `share` of the time left; None when
    none is left. Capped below the socket timeout: the server cancels first (a clean
    error, not a dropped connection)."""
    cfg = settings()
    cap = cfg.db_connect_timeout_s * 750.0
    if cfg.db_statement_timeout_ms:
        cap = min(cap, float(cfg.db_statement_timeout_ms))
    ms = int(min((deadline - time.monotonic()) * 1000.0 * share, cap))
    if ms < 1:
        return None
    return set_local_timeouts(statement_timeout_ms=ms, lock_timeout_ms=max(1, ms // 4))


def _isolated(exc: BaseException) -> bool:
    """An error the server answered for one statement (the connection is fine)."""
    return isinstance(exc, DatabaseError) and bool(sqlstate(exc)) and not is_stale_error(exc)


def _reason(exc: BaseException) -> str:
    code = sqlstate(exc)
    return _REASONS.get(code) or ("bad_value" if code.startswith("22") else "error")


# Readings that failed at this container's last scrape run alone at the next: a broken
# gauge then costs one more round trip per scrape, not a failed batch and a retry of each.
_suspects: set[tuple[str, str]] = set()


def _key(reading: Reading) -> tuple[str, str]:
    return reading.families[0], reading.subject


def _run(
    db: Database, readings: list[Reading], deadline: float
) -> tuple[list[list[Any]], list[Failure]]:
    """The readings in one round trip (each alone when that fails), the suspects alone."""
    suspects = [r for r in readings if _key(r) in _suspects]
    batch = [r for r in readings if _key(r) not in _suspects]
    share = 1.0 if len(readings) == 1 else _BATCH_SHARE
    rows, failures = _batched(db, batch, deadline, share)
    more, late = _each(db, suspects, deadline)
    rows += more
    failures += late
    failed = {_key(f.reading) for f in failures}
    for reading in readings:
        if _key(reading) in failed:
            _suspects.add(_key(reading))
        else:
            _suspects.discard(_key(reading))
    return rows, failures


def _batched(
    db: Database, readings: list[Reading], deadline: float, share: float
) -> tuple[list[list[Any]], list[Failure]]:
    if not readings:
        return [], []
    timeouts = _timeouts(deadline, share)
    if timeouts is not None:
        union = "\nUNION ALL\n".join(f"({r.sql})" for r in readings)
        try:
            return db.run(f"{timeouts};\n{union}"), []
        except Exception as exc:
            if not _isolated(exc):
                raise
            if len(readings) == 1:
                return [], [Failure(readings[0], _reason(exc), server_message(exc))]
    return _each(db, readings, deadline)


def _each(
    db: Database, readings: list[Reading], deadline: float
) -> tuple[list[list[Any]], list[Failure]]:
    rows: list[list[Any]] = []
    failures: list[Failure] = []
    for i, reading in enumerate(readings):
        timeouts = _timeouts(deadline, 1.0 / (len(readings) - i))
        if timeouts is None:
            failures.append(Failure(reading, "timeout", "no time left in the scrape budget"))
            continue
        try:
            rows.extend(db.run(f"{timeouts};\n{reading.sql}"))
        except Exception as exc:
            if not _isolated(exc):
                raise
            failures.append(Failure(reading, _reason(exc), server_message(exc)))
    return rows, failures


# -- logged once per container and cause ---------------------------------------------------

_logged: set[tuple[str, ...]] = set()


def _first_time(cause: tuple[str, ...]) -> bool:
    if cause in _logged:
        return False
    _logged.add(cause)
    return True


def forget_logged() -> None:
    """As a new container (tests): nothing logged, no suspects."""
    _logged.clear()
    _suspects.clear()


def _log(failure: Failure) -> None:
    reading = failure.reading
    if not _first_time((reading.families[0], failure.reason, reading.subject)):
        return
    logger.warning(
        "live gauges left out of the scrape; counted in live_metric_errors_total at every"
        " scrape, logged once per container and cause",
        extra={
            "type": "metrics_scrape",
            "gauges": list(reading.families),
            "reason": failure.reason,
            "table": reading.subject or None,
            "error": failure.error,
        },
    )


# -- the scrape's live gauges --------------------------------------------------------------


def collect(db: Database, deadline: float | None = None) -> Collected:
    """Every live family that could be read, and (family, reason) for each left out.

    Raises only when the database itself failed (unreachable, connection lost): an
    error the server answered for one reading costs that reading.
    """
    if deadline is None:
        deadline = time.monotonic() + settings().metrics_scrape_budget_s
    policies = _policies()
    rows, failures = _run(db, _first_readings(policies), deadline)
    verdicts = {key: int(v) for kind, key, v in rows if kind == ".policy"}
    second: list[Reading] = []
    for policy in policies:
        verdict = verdicts.get(policy.table)
        if verdict:
            reading = _age_reading(policy)
            failures.append(Failure(reading, _POLICY_REASONS[verdict], "found by the policy check"))
        elif verdict == 0:
            second.append(_age_reading(policy))
    for kind, schema, usable in rows:
        if kind != ".statements":
            continue
        reading = Reading(
            (m.PG_STATEMENT_MEAN.name, m.PG_STATEMENT_CALLS.name, m.PG_STATEMENT_SECONDS.name),
            STATEMENTS_TOP_SQL.format(schema=schema, top=m.PG_STATEMENTS_TOP_N),
        )
        if usable:
            second.append(reading)
        else:
            failures.append(Failure(reading, "unsupported", "pg_stat_statements older than 1.8"))
    more, late = _run(db, second, deadline)
    rows += more
    failures += late
    return _collected(rows, failures, policies)


def _collected(rows: list[list[Any]], failures: list[Failure], policies: list[Policy]) -> Collected:
    out = Collected()
    read: dict[str, dict[str, float]] = {}
    for kind, key, value in rows:
        if kind.startswith("."):
            continue
        if not math.isfinite(value):  # PostgreSQL 17+ has infinite intervals
            failures.append(Failure(Reading((kind,), "", key), "bad_value", f"{value} read"))
            continue
        read.setdefault(kind, {})[key] = value
    left_out = {f for failure in failures for f in failure.reading.families}
    if m.DB_CONNECTIONS.name not in left_out:
        read[m.DB_CONNECTIONS.name] = {
            **dict.fromkeys(CONNECTION_STATES, 0.0),
            **read.get(m.DB_CONNECTIONS.name, {}),
        }
    ages = read.get(m.RETENTION_OLDEST_ROW_AGE.name, {})
    read[m.RETENTION_LAG.name] = {
        p.table: max(0.0, ages[p.table] - p.max_age_days * 86400)
        for p in policies
        if p.table in ages
    }
    for family in REGISTRY.values():
        values = read.get(family.name)
        if values and isinstance(family, LiveGauge):
            out.live[family.name] = _by(family, values)
    for failure in failures:
        _log(failure)
        out.failed.extend((family, failure.reason) for family in failure.reading.families)
    return out


def _by(family: LiveGauge, values: dict[str, float]) -> list[tuple[str, float]]:
    if not family.labelnames:
        return [("", value) for value in values.values()]
    (label,) = family.labelnames
    return [(family.labels(**{label: key}), value) for key, value in values.items()]
