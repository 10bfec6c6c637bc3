"""GET /metrics: the totals stored in PostgreSQL, plus gauges read at scrape time.

Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when the scraper's Accept
header asks for it. Bearer-token protected when a token is configured. All
reads happen before anything is rendered: a database that is down or errors is
a 503 with a JSON body, never a partial exposition.
"""

from __future__ import annotations

import time

from live_gauges import collect
from pg8000.exceptions import Error as PgError

from ops.api import Api, Request, Response, error_response, response
from ops.db import Database, DatabaseUnavailable, get_db, is_stale_error
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics.render import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    render,
    wants_openmetrics,
)
from ops.metrics.totals import compact_if_due, read_totals

app = Api()


@app.get("/metrics", auth=True)
def metrics(req: Request) -> Response:
    started = time.perf_counter()
    try:
        db = get_db()
        _compact(db)
        totals = read_totals(db)
        live = collect(db)
    except (DatabaseUnavailable, PgError, OSError) as exc:
        logger.warning(
            "metrics unavailable: database unreachable",
            extra={"type": "metrics_scrape", "status": "failed", "error": str(exc)},
        )
        return error_response(
            503,
            "metrics_unavailable",
            "the metrics database is unreachable or failing; no partial exposition is served",
        )
    m.DB_QUERY_DURATION.labels(operation="metrics_scrape").observe(
        (time.perf_counter() - started) * 1000.0
    )
    openmetrics = wants_openmetrics(req.header("accept"))
    body = render(totals, live, openmetrics=openmetrics)
    return response(200, body, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)


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
