"""What one invocation did to one table, and its three renderings.

One `TableOutcome` per table and invocation: the audit entry's payload (the
runbook's `payload->>'deleted'` queries), the `type=retention` log line (the Logs
Insights queries and dashboards) and the table's entry in the handler's response
are each rendered from it by one small function, so that they cannot disagree.
The keys are camelCase on the wire, as the queries and operators know them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pruning import Survey
from run_identity import Trigger

from ops.timestamps import PgTimestamp, utc_iso


class StopReason(StrEnum):
    """Why an invocation left expired rows in a table (`stoppedBy`)."""

    DEADLINE = "deadline"  # out of time: the next run goes on
    LOCKED = "locked"  # locks kept it from partitions or relations: the next run retries them
    CRASH = "crash"  # a crashed attempt's deletes, audited by a later run
    ERROR = "error"  # the run failed


@dataclass(frozen=True)
class Closing:
    """How the invocation left the table: what the run knows beyond the ledger's counts."""

    completed: bool  # nothing older than the cutoff is left
    duration_ms: int | None  # None: not measured (crash recovery, a failed run)
    stopped_by: StopReason | None = None
    partitions_skipped: tuple[str, ...] = ()
    relations_skipped: tuple[str, ...] = ()
    survey: Survey | None = None  # a dry run's findings
    recovered_by: str | None = None  # the run that audited a crashed run's deletes
    error: str | None = None


@dataclass(frozen=True)
class TableOutcome:
    """One table's result in one invocation. Counts are those of this audit entry only
    (what earlier entries of the run audited is not counted again)."""

    table: str
    run_id: str
    trigger: Trigger
    attempt: int
    dry_run: bool
    cutoff: PgTimestamp
    rows_deleted: int  # row by row, exact
    batches: int
    partitions_dropped: tuple[str, ...]
    partition_rows_estimate: int  # in the dropped partitions, by the planner's statistics
    closing: Closing
    already_completed: bool = False  # finished and audited by an earlier attempt: no entry now

    @property
    def deleted(self) -> int:
        """Every row removed, exact row by row plus the dropped partitions' estimate."""
        return self.rows_deleted + self.partition_rows_estimate

    @property
    def completed(self) -> bool:
        return self.closing.completed


def audit_payload(outcome: TableOutcome) -> dict[str, Any]:
    """The audit entry's payload; `deleted` is the seed's field, as `payload->>'deleted'`
    queries expect."""
    c = outcome.closing
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
    c = outcome.closing
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
        "durationMs": outcome.closing.duration_ms,
    }


def _particulars(c: Closing) -> dict[str, Any]:
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
