"""Gauges read from the database at scrape time, when their value is a fact about now.

* `active_sessions`: chat sessions updated within ACTIVE_SESSION_WINDOW_MINUTES (15).
* `db_connections{state}`: this database's client connections by state.
* `retention_last_success_timestamp_seconds{table}`: the newest completed,
  non-dry-run `retention.prune` audit entry per policy table (absent before the first).
* `retention_oldest_row_age_seconds{table}` and `retention_lag_seconds{table}`
  (the age beyond the policy's maximum, never negative), per policy table.

Oldest-row ages are read only for policy columns that exist, are timestamps and
lead an index (min() is then one index probe): a misconfigured policy is logged
and skipped rather than turning every scrape into a 503 or a sequential scan.
"""

from __future__ import annotations

from ops.config import settings
from ops.db import Database
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics.families import LiveGauge
from ops.retention_policies import Policy, PolicyError, load_policies
from ops.sql import quote_ident, quote_literal

CONNECTION_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")

# Three readings in one simple-protocol statement (one round trip; pg8000's
# parameterised path takes three). Values are interpolated as literals: the window
# is an int, the names pass through quote_literal.
LIVE_SQL = """
SELECT 'sessions', '', count(*)::float8 FROM chat_sessions
WHERE updated_at >= now() - make_interval(mins => {window})
UNION ALL
SELECT 'connections', coalesce(state, 'unknown'), count(*)::float8 FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
GROUP BY 2
UNION ALL
SELECT 'last_success', p.tbl, extract(epoch FROM a.occurred_at)::float8
FROM unnest({tables}) AS p(tbl)
CROSS JOIN LATERAL (
    SELECT occurred_at FROM audit_logs
    WHERE entity = p.tbl AND action = 'retention.prune'
      AND payload->>'completed' = 'true'
      AND coalesce(payload->>'dryRun', 'false') = 'false'
    ORDER BY occurred_at DESC LIMIT 1) AS a
UNION ALL
SELECT 'readable', p.tbl, 1
FROM unnest({tables}, {columns}) AS p(tbl, col)
JOIN pg_attribute AS a ON a.attrelid = to_regclass(p.tbl) AND a.attname = p.col
WHERE NOT a.attisdropped
  AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
  AND EXISTS (SELECT 1 FROM pg_index AS i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum)
"""


def _text_array(values: list[str]) -> str:
    return f"ARRAY[{', '.join(quote_literal(v) for v in values)}]::text[]"


def window_minutes() -> int:
    return settings().active_session_window_minutes


def _ident(name: str) -> str:
    """A policy's `schema.table` or column, each part quoted."""
    return ".".join(quote_ident(part) for part in name.split("."))


def _oldest_ages(db: Database, policies: list[Policy]) -> dict[str, float]:
    if not policies:
        return {}
    selects = [
        f"SELECT {i}, coalesce(extract(epoch FROM now() - min({_ident(p.column)})), 0)::float8"
        f" FROM {_ident(p.table)}"
        for i, p in enumerate(policies)
    ]
    return {policies[i].table: age for i, age in db.run("\nUNION ALL\n".join(selects))}


def _policies() -> list[Policy]:
    # A bad RETENTION_POLICIES costs the retention gauges, not the whole scrape.
    try:
        return load_policies()
    except PolicyError as exc:
        logger.error(
            "retention gauges skipped: invalid retention policies",
            extra={"type": "metrics_scrape", "error": str(exc)},
        )
        return []


def collect(db: Database) -> dict[str, list[tuple[str, float]]]:
    """family -> [(rendered labels, value)] for every live gauge of the catalogue."""
    policies = _policies()
    tables = [p.table for p in policies]
    rows = db.run(
        LIVE_SQL.format(
            window=window_minutes(),
            tables=_text_array(tables),
            columns=_text_array([p.column for p in policies]),
        )
    )
    sessions = 0.0
    connections = dict.fromkeys(CONNECTION_STATES, 0.0)
    last_success: dict[str, float] = {}
    readable: set[str] = set()
    for kind, key, value in rows:
        if kind == "sessions":
            sessions = value
        elif kind == "connections":
            connections[key] = value
        elif kind == "last_success":
            last_success[key] = value
        else:
            readable.add(key)
    unreadable = [t for t in tables if t not in readable]
    if unreadable:
        logger.warning(
            "retention gauges skipped: policy column missing, not a timestamp or not indexed",
            extra={"type": "metrics_scrape", "tables": unreadable},
        )
    ages = _oldest_ages(db, [p for p in policies if p.table in readable])
    lags = {
        p.table: max(0.0, ages[p.table] - p.max_age_days * 86400)
        for p in policies
        if p.table in ages
    }
    return {
        m.ACTIVE_SESSIONS.name: [("", sessions)],
        m.DB_CONNECTIONS.name: _by(m.DB_CONNECTIONS, "state", connections),
        m.RETENTION_LAST_SUCCESS.name: _by(m.RETENTION_LAST_SUCCESS, "table", last_success),
        m.RETENTION_OLDEST_ROW_AGE.name: _by(m.RETENTION_OLDEST_ROW_AGE, "table", ages),
        m.RETENTION_LAG.name: _by(m.RETENTION_LAG, "table", lags),
    }


def _by(family: LiveGauge, label: str, values: dict[str, float]) -> list[tuple[str, float]]:
    return [(family.labels(**{label: key}), value) for key, value in values.items()]
