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
"""

from __future__ import annotations

import time
from typing import Any

from live_gauges import Collected, collect
from pg8000.exceptions import Error as PgError

from ops.api import Request, Response, error_response, response
from ops.checks import CheckResult, configured_checks, fitted_budget, run_checks
from ops.concurrency import ChainedCall
from ops.config import settings
from ops.db import Database, DatabaseUnavailable, get_db, is_stale_error
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
from ops.service import service_api
from ops.tracing import span

app = service_api()


LIVE_GAUGES_SHARE = 0.8  # of METRICS_SCRAPE_BUDGET_S, counted from the scrape's start


class _StoreUnreachable(Exception):
    """The database did not answer the store's reads (down, hung, restarting)."""


@app.get("/metrics", auth=True, latency_critical=True)  # never waits on its own flush
def metrics(req: Request) -> Response:
    budget_s = fitted_budget(settings().metrics_scrape_budget_s)  # ends before the deadline
    # The live gauges end before the budget does, leaving time to hand the answer back.
    gauges_deadline = time.monotonic() + budget_s * LIVE_GAUGES_SHARE
    db = get_db()
    # The store read follows the database check on its worker: one hand-off, not two.
    read = ChainedCall(lambda: _read(db, gauges_deadline))
    checks = run_checks(configured_checks(), then=read)
    totals: Totals | None = None
    live: dict[str, Any] = {}
    if checks[0].ok:  # the database: the read had what is left of the scrape budget
        try:
            totals, live = _read_store(read, db, budget_s)
        except _StoreUnreachable as exc:
            logger.warning(
                "metrics store unreadable: database unreachable",
                extra={"type": "metrics_scrape", "status": "failed", "error": str(exc)},
            )
        except PgError as exc:  # the database answered with an error: the exposition is wrong
            logger.error(
                "metrics store unreadable: query failed",
                extra={"type": "metrics_scrape", "status": "failed", "error": str(exc)},
            )
            return error_response(
                503,
                "metrics_unavailable",
                "the metrics store could not be read; no partial exposition is served",
            )
    live.update(_measured(checks, database_up=totals is not None))
    openmetrics = wants_openmetrics(req.header("accept"))
    body = render(totals, live, openmetrics=openmetrics, stored=stored_families())
    return response(200, body, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)


def _read_store(read: ChainedCall, db: Database, budget_s: float) -> tuple[Totals, dict[str, Any]]:
    """Totals and live gauges, or _StoreUnreachable once the budget is spent."""
    if not read.wait(budget_s):
        db.discard()  # unblocks the reader; the next scrape connects afresh
        raise _StoreUnreachable(f"no answer within the scrape budget ({budget_s:.3g}s)")
    exc = read.exc
    if exc is None:
        return read.value  # type: ignore[no-any-return]
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


def _count_left_out(totals: Totals, collected: Collected) -> None:
    """Count each live family left out, and show its error series in this scrape: the
    stored total, or 0 for a series not stored yet (as a new counter series is first
    exposed). The increments are stored by this scrape's flush, read by the next."""
    errors = m.LIVE_METRIC_ERRORS
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


def _measured(checks: list[CheckResult], *, database_up: bool) -> Live:
    return {
        m.DATABASE_UP.name: [("", 1.0 if database_up else 0.0)],
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
