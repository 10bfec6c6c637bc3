"""What the run reports: each `TableOutcome` rendered three ways, and the run's metrics.

The `type=retention` log line (Logs Insights, dashboards) and the table's entry in the
response are rendered from the audit entry's payload (the runbook's queries), so that they
cannot disagree. The handler's `flush()` sends the metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ops.metrics import catalogue as m
from ops.timestamps import utc_iso
from retention.model import TableExit, TableOutcome

# What every table's log line and response entry carry, even one finished earlier.
_SUMMARY = "runId deleted rowsDeleted batches partitionsDropped cutoff completed dryRun durationMs"


def audit_payload(outcome: TableOutcome) -> dict[str, Any]:
    """`deleted` is the seed's field, as `payload->>'deleted'` queries expect."""
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


def _particulars(c: TableExit) -> dict[str, Any]:
    """The keys only some outcomes carry: what was skipped, found, recovered or failed."""
    named: dict[str, Any] = {
        "partitionsSkipped": list(c.partitions_skipped),
        "relationsSkipped": list(c.relations_skipped),
        "recoveredBy": c.recovered_by,
        "error": c.error,
    }
    fields = {k: v for k, v in named.items() if v}
    if s := c.survey:
        fields.update(wouldDelete=s.expired_rows, oldest=utc_iso(s.oldest))
        fields["wouldDropPartitions"] = s.partitions
    return fields


def log_fields(outcome: TableOutcome) -> dict[str, Any]:
    """partitionsDropped is a count here (Logs Insights sums it), droppedPartitions the
    names. No trigger or attempt: the job lines say those."""
    return {
        "type": "retention",
        "table": outcome.table,
        **{k: v for k, v in _rendered(outcome).items() if k not in ("trigger", "attempt")},
        "partitionsDropped": len(outcome.partitions_dropped),
        "droppedPartitions": list(outcome.partitions_dropped),
    }


def response_entry(outcome: TableOutcome) -> dict[str, Any]:
    done_earlier = {"alreadyCompleted": True} if outcome.already_completed else {}
    return {"table": outcome.table, **_rendered(outcome), **done_earlier}


def _rendered(outcome: TableOutcome) -> dict[str, Any]:
    """The audit payload; for a table an earlier attempt finished, its (zero) summary."""
    payload = audit_payload(outcome)
    if outcome.already_completed:
        return {k: payload[k] for k in _SUMMARY.split()}
    return payload


def count_rows_deleted(outcomes: Iterable[TableOutcome]) -> None:
    for o in outcomes:
        if not o.dry_run and o.rows_deleted:
            m.RETENTION_ROWS_DELETED.labels(table=o.table).inc(o.rows_deleted)


def count_run(*, succeeded: bool, seconds: float) -> None:
    m.RETENTION_RUNS.labels(status="succeeded" if succeeded else "failed").inc()
    m.RETENTION_RUN_DURATION.observe(seconds)


def flag_missing_index(table: str, missing: bool) -> None:
    m.RETENTION_MISSING_INDEX.labels(table=table).set(1 if missing else 0)
