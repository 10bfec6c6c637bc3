"""The retention run's vocabulary: every type its modules pass to one another (only the
layer below it, so no module imports a type from one later in the flow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

import pg8000.native

from ops.retention_policies import Policy
from ops.sql import quote_ident
from ops.timestamps import PgTimestamp

# The column's type as catalogued -> how every statement of the run types its parameters.
SQL_TYPES = {"timestamp with time zone": "timestamptz", "timestamp without time zone": "timestamp"}


class EventError(ValueError):
    """The event cannot be turned into a run."""


class LeaseLost(RuntimeError):
    """Another run took over the lease (ours expired): stop without writing anything."""


class Trigger(StrEnum):
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
class Limits:  # the timeouts of one run's units of work, sized to its deadline margin
    lock_timeout_ms: int
    statement_timeout_ms: int
    batch_target_ms: int = 50  # how long one batch's transaction should take


class RunStatus(StrEnum):
    COMPLETED = "completed"  # every table done: the run is never run again
    STOPPED = "stopped"  # the deadline (or locks) left rows: the next delivery resumes it
    FAILED = "failed"  # an error: Scheduler retries it
    SKIPPED = "skipped"  # not started (a duplicate, or another run holds the lease)


class SkipReason(StrEnum):
    DUPLICATE = "duplicate"  # the run already completed
    IN_PROGRESS = "in_progress"  # this run, held by another invocation of it
    BUSY = "busy"  # another run holds the lease


@dataclass(frozen=True)
class TableState:  # a table's row in the run ledger when the attempt starts
    table: str
    cutoff: PgTimestamp  # the run's instant, from the database clock
    completed: bool


@dataclass(frozen=True)
class RunStart:  # what trying to start the run found: this invocation works or is skipped
    skipped: SkipReason | None
    attempt: int = 0
    tables: dict[str, TableState] = field(default_factory=dict)
    held_by: str | None = None  # the run key holding the lease, if another invocation
    held_until: datetime | None = None


@dataclass(frozen=True)
class Relation:  # a table or partition, named from the catalog
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
class Target:  # a policy whose table and column the catalog confirmed
    policy: Policy
    relation: Relation
    column_type: str  # a key of SQL_TYPES
    partitioned: bool
    indexed: bool

    @property
    def sql_type(self) -> str:
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


@dataclass(frozen=True)
class Step:  # one committed unit of work on a table: a batch, or a partition dropped whole
    rows: int  # deleted row by row (exact)
    batches: int = 0
    partition: str | None = None  # dropped whole
    partition_rows: int = 0  # its rows, as the planner's statistics count them
    final: bool = False  # the invocation's last step on the table: it carries the audit entry
    done: bool = False  # final, and nothing older than the cutoff is left


class StepRecorder(Protocol):  # each method raises unless this run may still work
    def fence(self, conn: pg8000.native.Connection) -> None: ...  # before taking locks

    def record(self, conn: pg8000.native.Connection, step: Step) -> None: ...  # in its transaction


@dataclass
class Skips:  # what locks kept this invocation from: left for the next run, never failing it
    partitions: list[str] = field(default_factory=list)  # not dropped
    relations: list[str] = field(default_factory=list)  # not pruned row by row

    def __bool__(self) -> bool:
        return bool(self.partitions or self.relations)


@dataclass
class KeysetCursor:  # where row-by-row pruning of one relation stands between batches
    size: int  # rows the next batch deletes at most
    floor: int  # a batch cancelled at this size fails the run
    frontier: Any = None  # every expired row below it is gone (ordered mode)
    skip_locked: bool = False  # a batch met a locked row: step around such rows from now on


@dataclass(frozen=True)
class BatchResult:  # what one DELETE batch did: applied to its cursor once committed
    rows: int
    done: bool  # nothing expired is left in the relation
    frontier: Any


@dataclass(frozen=True)
class Survey:  # what a dry run reports for one table
    expired_rows: int
    oldest: PgTimestamp | None  # the oldest value, expired or not; None: no row has one
    partitions: list[str]


class StopReason(StrEnum):  # why an invocation left expired rows in a table (`stoppedBy`)
    DEADLINE = "deadline"  # out of time: the next run goes on
    LOCKED = "locked"  # locks kept it from partitions or relations: the next run retries them
    CRASH = "crash"  # a crashed attempt's deletes, audited by a later run
    ERROR = "error"  # the run failed


@dataclass(frozen=True)
class TableExit:  # how the invocation leaves the table: what it knows beyond the ledger's counts
    completed: bool  # nothing older than the cutoff is left
    duration_ms: int | None  # None: not measured (crash recovery, a failed run)
    stopped_by: StopReason | None = None
    partitions_skipped: tuple[str, ...] = ()
    relations_skipped: tuple[str, ...] = ()
    survey: Survey | None = None  # a dry run's findings
    recovered_by: str | None = None  # the run that audited a crashed run's deletes
    error: str | None = None


@dataclass(frozen=True)
class TableOutcome:  # one table's result in one invocation, counting what this entry audits
    table: str
    run_id: str
    trigger: Trigger
    attempt: int
    dry_run: bool
    cutoff: PgTimestamp
    exit: TableExit
    rows_deleted: int = 0  # row by row, exact
    batches: int = 0
    partitions_dropped: tuple[str, ...] = ()
    partition_rows_estimate: int = 0  # in the dropped partitions, by the planner's statistics
    already_completed: bool = False  # finished and audited by an earlier attempt: no entry now

    @property
    def deleted(self) -> int:  # exact row by row, plus the dropped partitions' estimate
        return self.rows_deleted + self.partition_rows_estimate
