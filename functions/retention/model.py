"""The retention run's vocabulary: every type and enum its modules pass to one another.

Only the ops layer below it; every other module of the function imports from here, so no
module imports a type from one later in the flow (app -> run -> pruning -> ledger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

import pg8000.native

from ops.config import Settings
from ops.retention_policies import Policy
from ops.sql import quote_ident
from ops.timestamps import PgTimestamp

# The column's type as catalogued -> how every statement of the run types its parameters.
SQL_TYPES = {"timestamp with time zone": "timestamptz", "timestamp without time zone": "timestamp"}


class EventError(ValueError):
    """The event cannot be turned into a run."""


class LeaseLost(RuntimeError):
    """Another run took over the lease (ours expired): stop without writing anything."""


# -- the run and its settings ---------------------------------------------------------------
class Trigger(StrEnum):
    """What delivered the run's event (the audit entry's and the job log's `trigger`)."""

    SCHEDULER = "scheduler"  # EventBridge Scheduler, the template's schedule
    EVENTBRIDGE = "eventbridge"  # a classic EventBridge scheduled event
    MANUAL = "manual"  # anything else: an operator, a re-driven failure record


@dataclass(frozen=True)
class RunIdentity:
    key: str
    trigger: Trigger
    dry_run: bool = False
    tables: tuple[str, ...] | None = None
    attempt_number: str | None = None
    execution_id: str | None = None


@dataclass(frozen=True)
class JobSettings:
    """The timing knobs (read and checked in ops.config)."""

    lock_timeout_ms: int = Settings.retention_lock_timeout_ms
    statement_timeout_ms: int = Settings.retention_statement_timeout_ms
    deadline_margin_ms: int = Settings.retention_deadline_margin_ms
    lease_ttl_ms: int = Settings.retention_lease_ttl_ms
    batch_target_ms: int = Settings.retention_batch_target_ms

    @property
    def lease_wait_ms(self) -> int:
        """A busy lease is waited on this long: enough to see a crashed holder's lease expire."""
        return self.lease_ttl_ms + 2_000


@dataclass(frozen=True)
class Limits:
    """The timeouts of one run's units of work, sized to its deadline margin."""

    lock_timeout_ms: int
    statement_timeout_ms: int
    batch_target_ms: int = 50  # how long one batch's transaction should take


class RunStatus(StrEnum):
    """How an attempt ended (`retention_runs.status`, and the response's `status`)."""

    COMPLETED = "completed"  # every table done: the run is never run again
    STOPPED = "stopped"  # the deadline (or locks) left rows: the next delivery resumes it
    FAILED = "failed"  # an error: Scheduler retries it
    SKIPPED = "skipped"  # not started (a duplicate, or another run holds the lease)


class SkipReason(StrEnum):
    """Why an invocation did not start its run (the response's and the log's `reason`)."""

    DUPLICATE = "duplicate"  # the run already completed
    IN_PROGRESS = "in_progress"  # this run, held by another invocation of it
    BUSY = "busy"  # another run holds the lease


@dataclass(frozen=True)
class TableState:
    """A table's row in the run ledger when the attempt starts."""

    table: str
    cutoff: PgTimestamp  # the run's instant, from the database clock
    completed: bool


@dataclass(frozen=True)
class RunStart:
    """What trying to start the run found: this invocation works (`skipped` None) or not."""

    skipped: SkipReason | None
    attempt: int = 0
    tables: dict[str, TableState] = field(default_factory=dict)
    held_by: str | None = None  # the run key holding the lease, if another invocation
    held_until: datetime | None = None


# -- what a table is --------------------------------------------------------------------------
@dataclass(frozen=True)
class Relation:
    """A table or partition, named from the catalog."""

    oid: int
    schema: str
    name: str

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Target:
    """A policy whose table and column the catalog confirmed."""

    policy: Policy
    relation: Relation
    column_type: str  # "timestamp with time zone" or "timestamp without time zone"
    partitioned: bool
    indexed: bool

    @property
    def sql_type(self) -> str:
        """What the run casts its cutoff and bounds to: `timestamptz` or `timestamp`."""
        return SQL_TYPES[self.column_type]

    @property
    def table(self) -> str:
        return self.policy.table

    @property
    def column_sql(self) -> str:
        return quote_ident(self.policy.column)


@dataclass(frozen=True)
class PartitionDrop:
    parent: Relation
    partition: Relation
    upper: Decimal  # the upper bound's epoch: drops go oldest first


@dataclass
class PartitionPlan:
    drops: list[PartitionDrop] = field(default_factory=list)  # oldest first
    row_by_row: list[Relation] = field(default_factory=list)


# -- pruning a table ----------------------------------------------------------------------------
class Ending(StrEnum):
    """Where a step leaves its table in this invocation."""

    MORE = "more"  # more steps follow
    PAUSED = "paused"  # the invocation's last step on the table; rows are left (time, locks)
    DONE = "done"  # the last step: nothing older than the cutoff is left


@dataclass(frozen=True)
class Step:
    """One committed unit of work on a table: a batch, or a partition dropped whole."""

    rows: int  # deleted row by row (exact)
    batches: int = 0
    partition: str | None = None  # dropped whole
    partition_rows: int = 0  # its rows, as the planner's statistics count them
    ending: Ending = Ending.MORE

    @property
    def final(self) -> bool:
        """The invocation's last step on the table: it carries the audit entry."""
        return self.ending is not Ending.MORE

    @property
    def done(self) -> bool:
        return self.ending is Ending.DONE


class StepRecorder(Protocol):
    def fence(self, conn: pg8000.native.Connection) -> None:
        """Raise unless this run may still work (before taking locks others would queue on)."""

    def record(self, conn: pg8000.native.Connection, step: Step) -> None:
        """Book the step in the same transaction as the work; raise (so it rolls back)
        unless this run may still work."""


@dataclass
class Skips:
    """What a lock kept this invocation from: left for the next run, never failing this one."""

    partitions: list[str] = field(default_factory=list)  # not dropped
    relations: list[str] = field(default_factory=list)  # not pruned row by row

    def __bool__(self) -> bool:
        return bool(self.partitions or self.relations)


@dataclass
class KeysetCursor:
    """Where row-by-row pruning of one relation stands between its batches."""

    size: int  # rows the next batch deletes at most
    floor: int  # a batch cancelled at this size fails the run
    frontier: Any = None  # every expired row below it is gone (ordered mode)
    skip_locked: bool = False  # a batch met a locked row: step around such rows from now on


@dataclass(frozen=True)
class BatchResult:
    """What one DELETE batch did; applied to its cursor once the transaction committed."""

    rows: int
    done: bool  # nothing expired is left in the relation
    frontier: Any


@dataclass(frozen=True)
class Survey:
    """What a dry run reports for one table."""

    expired_rows: int
    oldest: PgTimestamp | None  # the oldest value, expired or not; None: no row has one
    partitions: list[str]


# -- what an invocation did to a table ---------------------------------------------------------
class StopReason(StrEnum):
    """Why an invocation left expired rows in a table (`stoppedBy`)."""

    DEADLINE = "deadline"  # out of time: the next run goes on
    LOCKED = "locked"  # locks kept it from partitions or relations: the next run retries them
    CRASH = "crash"  # a crashed attempt's deletes, audited by a later run
    ERROR = "error"  # the run failed


@dataclass(frozen=True)
class TableExit:
    """How the invocation leaves the table: what the run knows beyond the ledger's counts."""

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
    exit: TableExit
    already_completed: bool = False  # finished and audited by an earlier attempt: no entry now

    @property
    def deleted(self) -> int:
        """Every row removed, exact row by row plus the dropped partitions' estimate."""
        return self.rows_deleted + self.partition_rows_estimate

    @property
    def completed(self) -> bool:
        return self.exit.completed
