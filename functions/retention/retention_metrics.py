"""The retention run's metrics, recorded through the ops layer's catalogue.

Rows deleted per table, run outcome and duration, and whether a policy table lacks
an index on its column. The handler's `ops.metrics.flush()` at the end of every
invocation sends them to the store and to CloudWatch; it never raises.
"""

from __future__ import annotations

from collections.abc import Iterable

from table_outcome import TableOutcome

from ops.metrics import catalogue as m


def rows_deleted(outcomes: Iterable[TableOutcome]) -> None:
    for o in outcomes:
        if not o.dry_run and o.rows_deleted:
            m.RETENTION_ROWS_DELETED.labels(table=o.table).inc(o.rows_deleted)


def run_finished(*, succeeded: bool, seconds: float) -> None:
    m.RETENTION_RUNS.labels(status="succeeded" if succeeded else "failed").inc()
    m.RETENTION_RUN_DURATION.observe(seconds)


def missing_index(table: str, missing: bool) -> None:
    m.RETENTION_MISSING_INDEX.labels(table=table).set(1 if missing else 0)
