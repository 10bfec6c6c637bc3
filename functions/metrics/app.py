"""GET /metrics: the totals stored in PostgreSQL, plus gauges measured at scrape time.

Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when the scraper's Accept
header asks for it. Bearer-token protected when a token is configured.

The store lives in the database it watches, so a scrape must stay useful when
that database is down: every scrape runs the configured checks (the database,
optional dependencies) within their budgets and exposes `database_up`,
`health_check_status` and `health_check_latency_seconds` from them. When the database
is unreachable or does not answer within METRICS_SCRAPE_BUDGET_S, the answer is
still 200 with those, and no stored family has a sample (never a partial or
made-up total). A database that answers the store's own reads with an error (say,
a missing migration) is a 503: the exposition would be wrong, and Prometheus' `up`
says so. A live gauge that fails (a bad value, a missing grant or table, a timeout)
costs only its own family in that scrape (live_gauges.py): it is counted in
`live_metric_errors_total`, whose series is in that same scrape (at 0 when new, as
every new counter series is first exposed; the increment itself is stored by the
scrape's flush).

With a separate metrics database (METRICS_DATABASE_URL / METRICS_DB_SECRET_ARN,
docs/metrics-database.md) the two halves part: the stored totals are read there, as a
check of the scrape (`metrics_store`, on its own worker, beside the configured checks),
and the live gauges from the application's database. Either may be down without the
other: the application's database down gives `database_up 0` and the stored totals;
the store down, or answering with an error, gives `metrics_store_up 0` and the live
gauges, 200 (a 503 would hide the gauges that page for the application's database).
`metrics_store_up` is in every scrape; without a separate store it is `database_up`.
"""

from __future__ import annotations

import time
from typing import Any

from pg8000.exceptions import Error as PgError

from metrics.live_gauges import Collected, collect
from ops.api import Request, Response, error_response, response
from ops.checks import Check, CheckResult, configured_checks, fitted_budget, run_checks
from ops.concurrency import ChainedCall
from ops.config import settings
from ops.db import (
    Database,
    DatabaseUnavailable,
    get_db,
    is_stale_error,
    separate_store,
    store_reader,
)
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Live,
    render,
    wants_openmetrics,
)
from ops.metrics.text_format import format_labels
from ops.metrics.totals import TotalRow, Totals, compact_if_due, read_totals, stored_families
from ops.tracing import span
from ops.wiring import service_api

app = service_api()


LIVE_GAUGES_SHARE = 0.8  # of METRICS_SCRAPE_BUDGET_S, counted from the scrape's start
STORE_CHECK = "metrics_store"  # a separate store's read, as a check of the scrape


class _StoreUnreachable(Exception):
    """The database did not answer the scrape's reads (down, hung, restarting)."""


@app.get("/metrics", auth=True, latency_critical=True)  # never waits on its own flush
def metrics(req: Request) -> Response:
    budget_s = fitted_budget(settings().metrics_scrape_budget_s)  # ends before the deadline
    # The live gauges end before the budget does, leaving time to hand the answer back.
    gauges_deadline = time.monotonic() + budget_s * LIVE_GAUGES_SHARE
    db = get_db()
    if separate_store():
        return _scrape_apart(req, db, budget_s, gauges_deadline)
    # The store read follows the database check on its worker: one hand-off, not two.
    read = ChainedCall(lambda: _read(db, gauges_deadline))
    checks = run_checks(configured_checks(), then=read)
    totals: Totals | None = None
    live: dict[str, Any] = {}
    if checks[0].ok:  # the database: the read had what is left of the scrape budget
        try:
            totals, live = _answer(read, db, budget_s)
        except _StoreUnreachable as exc:
            logger.warning(
                "metrics store unreadable: database unreachable",
                extra={"type": "metrics_scrape", "status": "failed", "error": str(exc)},
            )
        except PgError as exc:  # the database answered with an error: the exposition is wrong
            return _store_error(exc)
    up = totals is not None
    live.update(_measured(checks, database_up=up, store_up=up))
    return _exposition(req, totals, live)


def _store_error(exc: PgError) -> Response:
    logger.error(
        "metrics store unreadable: query failed",
        extra={"type": "metrics_scrape", "status": "failed", "error": str(exc)},
    )
    return error_response(
        503,
        "metrics_unavailable",
        "the metrics store could not be read; no partial exposition is served",
    )


def _exposition(req: Request, totals: Totals | None, live: dict[str, Any]) -> Response:
    openmetrics = wants_openmetrics(req.header("accept"))
    body = render(totals, live, openmetrics=openmetrics, stored=stored_families())
    return response(200, body, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)


class _StoreRead:
    """A separate store's totals, read as the scrape's `metrics_store` check: the check
    fails (metrics_store_up 0) when the read does, whatever the reason."""

    def __init__(self, budget_s: float) -> None:
        self.db = store_reader()
        self.totals: Totals | None = None
        self.check = Check(
            STORE_CHECK,
            self._probe,
            budget_s,
            critical=False,
            component_type="datastore",
            on_timeout=self.db.discard,  # unblocks the reader; the next scrape connects afresh
        )

    def _probe(self, _budget_s: float) -> None:
        started = time.perf_counter()
        with span("metrics store read"):
            _compact(self.db)
            self.totals = read_totals(self.db, settings().metrics_new_series_hold_s)
        m.DB_QUERY_DURATION.labels(operation="metrics_scrape").observe(
            time.perf_counter() - started
        )


def _scrape_apart(req: Request, db: Database, budget_s: float, gauges_deadline: float) -> Response:
    """The store on a database of its own: its read runs beside the configured checks, the
    live gauges after the application database's check, as before."""
    store = _StoreRead(budget_s)
    read = ChainedCall(lambda: collect(db, gauges_deadline))
    *checks, stored = run_checks([*configured_checks(), store.check], then=read)
    collected: Collected | None = None
    if checks[0].ok:
        try:
            collected = _answer(read, db, budget_s)
        except (_StoreUnreachable, PgError) as exc:  # each gauge's own errors are isolated
            logger.warning(
                "live gauges unread: the application's database did not answer",
                extra={"type": "metrics_scrape", "status": "failed", "error": str(exc)},
            )
    totals = store.totals if stored.ok else None
    live: dict[str, Any] = {}
    if collected is not None:
        _count_left_out(totals, collected)
        live.update(collected.live)
    live.update(_measured(checks, database_up=collected is not None, store_up=totals is not None))
    return _exposition(req, totals, live)


def _answer(read: ChainedCall, db: Database, budget_s: float) -> Any:
    """What the chained call returned, or _StoreUnreachable once the budget is spent."""
    if not read.wait(budget_s):
        db.discard()  # unblocks the reader; the next scrape connects afresh
        raise _StoreUnreachable(f"no answer within the scrape budget ({budget_s:.3g}s)")
    exc = read.exc
    if exc is None:
        return read.value
    if isinstance(exc, (DatabaseUnavailable, OSError)) or (
        isinstance(exc, PgError) and is_stale_error(exc)
    ):
        raise _StoreUnreachable(str(exc)) from exc
    raise exc


def _read(db: Database, gauges_deadline: float) -> tuple[Totals, dict[str, Any]]:
    started = time.perf_counter()
    with span("metrics store read"):  # on the database check's worker, in the invocation
        _compact(db)
        totals = read_totals(db, settings().metrics_new_series_hold_s)
        collected = collect(db, gauges_deadline)
        _count_left_out(totals, collected)
    m.DB_QUERY_DURATION.labels(operation="metrics_scrape").observe(time.perf_counter() - started)
    return totals, dict(collected.live)


def _count_left_out(totals: Totals | None, collected: Collected) -> None:
    """Count each live family left out, and show its error series in this scrape: the
    stored total, or 0 for a series not stored yet (as a new counter series is first
    exposed). The increments are stored by this scrape's flush, read by the next.
    Without stored totals (the store unread), only counted."""
    errors = m.LIVE_METRIC_ERRORS
    if totals is None:
        for family, reason in collected.failed:
            errors.labels(family=family, reason=reason).inc()
        return
    rows = totals.setdefault(errors.name, [])
    shown = {row.labels for row in rows}
    for family, reason in collected.failed:
        errors.labels(family=family, reason=reason).inc()
        labels = format_labels(errors.labelnames, (family, reason))
        if labels not in shown:
            shown.add(labels)
            rows.append(TotalRow(labels, {"": 0.0}))
    rows.sort()
    if not rows:
        del totals[errors.name]


def _measured(checks: list[CheckResult], *, database_up: bool, store_up: bool) -> Live:
    return {
        m.DATABASE_UP.name: [("", 1.0 if database_up else 0.0)],
        m.METRICS_STORE_UP.name: [("", 1.0 if store_up else 0.0)],
        m.HEALTH_CHECK_STATUS.name: [
            (m.HEALTH_CHECK_STATUS.labels(check=c.name), 1.0 if c.ok else 0.0) for c in checks
        ],
        m.HEALTH_CHECK_LATENCY.name: [
            (m.HEALTH_CHECK_LATENCY.labels(check=c.name), round(c.latency_seconds, 6))
            for c in checks
        ],
    }


def _compact(db: Database) -> None:
    """Housekeeping that keeps scrapes cheap; the sums are right without it."""
    try:
        compact_if_due(db)
    except PgError as exc:
        if is_stale_error(exc):
            raise
        logger.warning(
            "metrics compaction skipped", extra={"type": "metrics_scrape", "error": str(exc)}
        )


lambda_handler = app.lambda_handler
