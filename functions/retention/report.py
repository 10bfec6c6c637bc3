"""What the run reports: each `TableOutcome` rendered three ways, and the run's metrics.

The audit entry's payload (the runbook's `payload->>'deleted'` queries), the
`type=retention` log line (Logs Insights queries, dashboards) and the table's entry in the
handler's response are each rendered from one outcome, so that they cannot disagree. The
keys are camelCase on the wire, as the queries and operators know them. The metrics go
through the ops layer's catalogue; the handler's `flush()` sends them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ops.metrics import catalogue as m
from ops.timestamps import utc_iso
from retention.model import TableExit, TableOutcome


def audit_payload(outcome: TableOutcome) -> dict[str, Any]:
    """The audit entry's payload; `deleted` is the seed's field, as `payload->>'deleted'`
    queries expect."""
    c = outcome.exit
    return {
        "deleted": outcome.deleted,
        "runId": outcome.run_id,
        "trigger": outcome.trigger,
        "attempt": outcome.attempt,
        "dryRun": outcome.dry_run,
        "cutoff": utc_iso(outcome.cutoff),
        "rowsDeleted": outcome.rows_deleted,
        "batches": outcome.batches,
        "partitionsDropped": list(outcome.partitions_dropped),
        "partitionRowsEstimate": outcome.partition_rows_estimate,
        "completed": c.completed,
        "durationMs": c.duration_ms,
        "stoppedBy": None if c.stopped_by is None else c.stopped_by.value,
        **_particulars(c),
    }


def log_fields(outcome: TableOutcome) -> dict[str, Any]:
    """The `type=retention` line's fields; partitionsDropped is a count here (Logs Insights
    sums it) and droppedPartitions the names. No trigger or attempt: the job lines say those."""
    c = outcome.exit
    fields = {
        "type": "retention",
        "table": outcome.table,
        **_summary(outcome),
        "partitionsDropped": len(outcome.partitions_dropped),
    }
    if not outcome.already_completed:
        fields["partitionRowsEstimate"] = outcome.partition_rows_estimate
        fields["stoppedBy"] = None if c.stopped_by is None else c.stopped_by.value
    return {**fields, **_particulars(c), "droppedPartitions": list(outcome.partitions_dropped)}


def response_entry(outcome: TableOutcome) -> dict[str, Any]:
    """The table's entry in the handler's response: the audit payload, or for a table an
    earlier attempt finished, the (zero) summary marked alreadyCompleted."""
    if outcome.already_completed:
        return {"table": outcome.table, **_summary(outcome), "alreadyCompleted": True}
    return {"table": outcome.table, **audit_payload(outcome)}


def _summary(outcome: TableOutcome) -> dict[str, Any]:
    """The keys every table's log line and response entry carry."""
    return {
        "runId": outcome.run_id,
        "deleted": outcome.deleted,
        "rowsDeleted": outcome.rows_deleted,
        "batches": outcome.batches,
        "partitionsDropped": list(outcome.partitions_dropped),
        "cutoff": utc_iso(outcome.cutoff),
        "completed": outcome.completed,
        "dryRun": outcome.dry_run,
        "durationMs": outcome.exit.duration_ms,
    }


def _particulars(c: TableExit) -> dict[str, Any]:
    """The keys only some outcomes carry: what was skipped, found, recovered or failed."""
    fields: dict[str, Any] = {}
    if c.partitions_skipped:
        fields["partitionsSkipped"] = list(c.partitions_skipped)
    if c.relations_skipped:
        fields["relationsSkipped"] = list(c.relations_skipped)
    if c.survey is not None:
        fields["wouldDelete"] = c.survey.expired_rows
        fields["oldest"] = utc_iso(c.survey.oldest)
        fields["wouldDropPartitions"] = c.survey.partitions
    if c.recovered_by is not None:
        fields["recoveredBy"] = c.recovered_by
    if c.error is not None:
        fields["error"] = c.error
    return fields


def count_rows_deleted(outcomes: Iterable[TableOutcome]) -> None:
    for o in outcomes:
        if not o.dry_run and o.rows_deleted:
            m.RETENTION_ROWS_DELETED.labels(table=o.table).inc(o.rows_deleted)


def count_run(*, succeeded: bool, seconds: float) -> None:
    m.RETENTION_RUNS.labels(status="succeeded" if succeeded else "failed").inc()
    m.RETENTION_RUN_DURATION.observe(seconds)


def flag_missing_index(table: str, missing: bool) -> None:
    m.RETENTION_MISSING_INDEX.labels(table=table).set(1 if missing else 0)
