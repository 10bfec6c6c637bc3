"""Every metric family the bundle exposes: names, labels, buckets, CloudWatch mirror.

The catalogue is the contract with dashboards, alert rules and CloudWatch alarms:
names and labels here are the ones operators already query, and reserved: a team
declares its own families in its own code (`from ops.metrics import Counter`), never
here, and cannot redeclare these (ops.metrics.families).

    from ops.metrics import catalogue as m
    m.WEBHOOK_FAILURES.labels(source="stripe").inc()
    m.TOOL_CALL_DURATION.labels(tool="search").observe(0.123)  # seconds

Durations are in seconds and sizes in bytes (Prometheus' base units).

Label values must stay a small, closed set: `route` is the route template
(`/listings/{id}`), never the raw path; never user ids, emails or free text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ops.config import settings
from ops.metrics.emf import Emf
from ops.metrics.families import (
    Counter,
    Gauge,
    Histogram,
    LiveCounter,
    LiveGauge,
    reserve_catalogue,
)


def function_name() -> str:
    """The `function` label: the Lambda function's name (the local gateway sets it too)."""
    return settings().function_name


# Bucket bounds in seconds. HTTP: the seed's buckets (10 ms to 5 s) plus 1, 2.5 and 5 ms:
# health routes answer in about 1 ms, and with 10 ms as the first bound every fast
# route's p95 read as 9.5 ms. 0.2 and 0.5 stay bounds: the latency objective and the
# SLO rules read them.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
TOOL_CALL_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5)
DB_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
HEALTH_CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
RETENTION_RUN_BUCKETS = (1, 5, 15, 60, 300, 900)


def _status_class(labels: Mapping[str, str]) -> str:
    return f"{labels['status'][:1]}xx"


# Probe routes: the health routes and the /metrics scrape, which load balancers, uptime
# checkers and Prometheus call on a schedule. Their 503s are the health signal, not API
# errors, and their traffic says nothing about what users get: the API's error rate and
# the SLOs leave them out, in CloudWatch as their own EMF metric (below) and in PromQL
# with the matcher infra/monitoring/slo.py writes from this list (tests/monitoring/test_slo.py).
PROBE_ROUTES = ("/health", "/health/live", "/health/ready", "/health/detailed", "/metrics")


def _requests_metric(labels: Mapping[str, str]) -> str:
    return "health_probe_requests" if labels["route"] in PROBE_ROUTES else "http_requests"


def _label(name: str) -> tuple[str, Callable[[Mapping[str, str]], str]]:
    """An EMF dimension that is the label of the same name (for closed sets only)."""
    return (name, lambda labels: labels[name])


# -- HTTP (recorded for every response of every API function: see ops.metrics.http)
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status code.",
    ("method", "route", "status"),
    emf=Emf(
        "http_requests",
        "Count",
        dimension=("status_class", _status_class),
        name_of=(("http_requests", "health_probe_requests"), _requests_metric),
    ),
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration in seconds, by method and route template.",
    ("method", "route"),
    buckets=HTTP_BUCKETS,
    emf=Emf("http_request_duration_seconds", "Seconds"),
)

# -- Security (recorded by ops.auth for every refused request to a protected route)
AUTH_FAILURES = Counter(
    "auth_failures_total",
    "Requests to token-protected routes refused, by route template and reason: missing (no"
    " credentials), wrong (not the valid bearer token), misconfigured (no usable token: 503).",
    ("route", "reason"),
    allowed={"reason": ("missing", "wrong", "misconfigured")},
    emf=Emf("auth_failures", "Count", dimension=_label("reason")),
)

# -- Backend events (recorded by the backend's own functions)
WEBHOOK_FAILURES = Counter(
    "webhook_failures_total",
    "Webhook deliveries that failed, by source.",
    ("source",),
    emf=Emf("webhook_failures", "Count"),
)
TOOL_CALLS = Counter(
    "tool_calls_total",
    "Moltbot tool calls, by tool and outcome.",
    ("tool", "status"),
    emf=Emf("tool_calls", "Count"),
)
TOOL_CALL_DURATION = Histogram(
    "tool_call_duration_seconds",
    "Moltbot tool call duration in seconds, by tool.",
    ("tool",),
    buckets=TOOL_CALL_BUCKETS,
    emf=Emf("tool_call_duration_seconds", "Seconds"),
)
PAIRING_FAILURES = Counter(
    "pairing_failures_total",
    "Failed DM pairing attempts, by channel.",
    ("channel",),
    emf=Emf("pairing_failures", "Count"),
)
ACTIVE_SESSIONS = LiveGauge(
    "active_sessions",
    "Chat sessions updated within the last ACTIVE_SESSION_WINDOW_MINUTES (computed at scrape).",
)

# -- Database
DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "Database statement duration in seconds, by operation.",
    ("operation",),
    buckets=DB_QUERY_BUCKETS,
)
DB_CONNECTIONS = LiveGauge(
    "db_connections",
    "Connections to this database by state, from pg_stat_activity (computed at scrape).",
    ("state",),
)

# -- Health checks. Status is measured by the metrics function at each scrape, so it
# is never older than the scrape; failures and latency are recorded by every check run
# (health routes and scrapes alike).
DATABASE_UP = LiveGauge(
    "database_up",
    "1 when this scrape reached the database and read the stored totals within its budget,"
    " else 0 (measured at scrape time, like postgres_exporter's pg_up). With a separate"
    " metrics database: the application's database (its check and live gauges).",
)
METRICS_STORE_UP = LiveGauge(
    "metrics_store_up",
    "1 when this scrape read the stored totals (the metrics store) within its budget, else 0."
    " The same as database_up unless the store has a database of its own.",
)
HEALTH_CHECK_STATUS = LiveGauge(
    "health_check_status",
    "Each configured check, run at this scrape: 1 up, 0 down.",
    ("check",),
)
HEALTH_CHECK_LATENCY = LiveGauge(
    "health_check_latency_seconds",
    "Latency of each configured check at this scrape, in seconds (its budget on a timeout).",
    ("check",),
)
HEALTH_CHECK_FAILURES = Counter(
    "health_check_failures_total",
    "Health checks that failed, by check (every run counts: health routes and scrapes;"
    " check=metrics_store: a scrape's read of a separate metrics database).",
    ("check",),
    emf=Emf("health_check_failures", "Count", dimension=_label("check")),
)
HEALTH_CHECK_DURATION = Histogram(
    "health_check_duration_seconds",
    "Duration of every health check run in seconds, by check (health routes and scrapes"
    " alike; health_check_latency_seconds is this scrape's own run).",
    ("check",),
    buckets=HEALTH_CHECK_BUCKETS,
)

# -- The bundle itself
METRICS_FLUSH_FAILURES = Counter(
    "metrics_flush_failures_total",
    "Flushes of metric deltas to the database that failed (the deltas were kept).",
    ("function",),
    emf=Emf("metrics_flush_failures", "Count"),
)
METRICS_DELTAS_DROPPED = Counter(
    "metrics_deltas_dropped_total",
    "Series deltas a container gave up on: unconfirmed, sent without a reply (they may "
    "have been stored; past the outbox's bound, or at shutdown); lost, never stored (a "
    "container ended before they could be); family_conflict, refused by the store because "
    "another function declared their family with another shape.",
    ("function", "reason"),
    allowed={"reason": ("unconfirmed", "lost", "family_conflict")},
    emf=Emf("metrics_deltas_dropped", "Count", dimension=_label("reason")),
)
ERRORS = Counter(
    "errors_total",
    "Errors by function and kind (unhandled_exception, malformed_event, ...).",
    ("function", "kind"),
)

# -- Retention (recorded by the retention function; the rest computed at scrape)
RETENTION_ROWS_DELETED = Counter(
    "retention_rows_deleted_total",
    "Rows deleted by the retention job, by table.",
    ("table",),
    emf=Emf("retention_rows_deleted", "Count", dimension=_label("table")),
)
RETENTION_RUN_DURATION = Histogram(
    "retention_run_duration_seconds",
    "Duration of retention runs in seconds.",
    buckets=RETENTION_RUN_BUCKETS,
)
RETENTION_RUNS = Counter(
    "retention_runs_total",
    "Retention runs by outcome.",
    ("status",),
    allowed={"status": ("succeeded", "failed")},
    emf=Emf("retention_runs_{status}", "Count"),
)
RETENTION_MISSING_INDEX = Gauge(
    "retention_missing_index",
    "1 when a policy table has no index leading with its policy column (slow prunes), else 0.",
    ("table",),
)
RETENTION_LAST_SUCCESS = LiveGauge(
    "retention_last_success_timestamp_seconds",
    "When the last completed, non-dry-run prune of each policy table finished (Unix time).",
    ("table",),
)
RETENTION_OLDEST_ROW_AGE = LiveGauge(
    "retention_oldest_row_age_seconds",
    "Age of the oldest row of each policy table, in seconds.",
    ("table",),
)
RETENTION_LAG = LiveGauge(
    "retention_lag_seconds",
    "How far the oldest row of each policy table is past the policy's maximum age, in seconds.",
    ("table",),
)

# -- The database's own performance, read live at each scrape (functions/metrics/
# live_gauges.py), named after postgres_exporter's where it has one. Base units.
PG_MAX_CONNECTIONS = LiveGauge(
    "pg_settings_max_connections",
    "The server's max_connections setting (read at scrape).",
)
PG_CONNECTIONS_IN_USE = LiveGauge(
    "pg_connections_in_use",
    "Client connections to the whole server, every database, which count against"
    " max_connections (pg_stat_activity, read at scrape).",
)
PG_XACT_COMMIT = LiveCounter(
    "pg_stat_database_xact_commit_total",
    "Transactions committed in this database since its statistics were last reset"
    " (pg_stat_database, read at scrape).",
)
PG_XACT_ROLLBACK = LiveCounter(
    "pg_stat_database_xact_rollback_total",
    "Transactions rolled back in this database since its statistics were last reset"
    " (pg_stat_database, read at scrape).",
)
PG_DEADLOCKS = LiveCounter(
    "pg_stat_database_deadlocks_total",
    "Deadlocks detected in this database since its statistics were last reset"
    " (pg_stat_database, read at scrape).",
)
PG_OLDEST_TRANSACTION = LiveGauge(
    "pg_oldest_transaction_age_seconds",
    "Age of the oldest open transaction of a client connection to this database, in"
    " seconds (0: none; pg_stat_activity, read at scrape; other roles' sessions need"
    " pg_read_all_stats).",
)
PG_LONGEST_QUERY = LiveGauge(
    "pg_longest_query_duration_seconds",
    "How long the longest statement still running on this database has run, in seconds"
    " (0: none; pg_stat_activity, read at scrape).",
)
PG_STATEMENTS_TOP_N = 10
PG_STATEMENT_MEAN = LiveGauge(
    "pg_stat_statements_mean_seconds",
    f"Mean execution time of the {PG_STATEMENTS_TOP_N} slowest statements of this database"
    " by mean, in seconds, by pg_stat_statements queryid (its text: the runbook's query;"
    " absent without the extension).",
    ("queryid",),
)
PG_STATEMENT_CALLS = LiveCounter(
    "pg_stat_statements_calls_total",
    "Calls of each statement in pg_stat_statements_mean_seconds, by queryid, since the"
    " extension's statistics were last reset.",
    ("queryid",),
)
PG_STATEMENT_SECONDS = LiveCounter(
    "pg_stat_statements_seconds_total",
    "Execution time of each statement in pg_stat_statements_mean_seconds, in seconds, by"
    " queryid, since the extension's statistics were last reset (rate over calls: the"
    " recent mean).",
    ("queryid",),
)
LIVE_METRIC_ERRORS = Counter(
    "live_metric_errors_total",
    "Live families (read at scrape time) a scrape left out because reading them failed, by"
    " family and reason (permission, bad_value, missing, unsupported, timeout, error); the"
    " retention families count once per table.",
    ("family", "reason"),
    allowed={"reason": ("permission", "bad_value", "missing", "unsupported", "timeout", "error")},
)

reserve_catalogue()  # every name above is the catalogue's: a team cannot redeclare it
