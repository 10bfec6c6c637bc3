"""Deleting what one policy says is expired, in transactions short enough for live traffic.

Every unit of work is its own transaction with `lock_timeout` and `statement_timeout`
(SET LOCAL, sent with BEGIN), and carries the run's bookkeeping (lease renewal as
a fence, progress, and on the last unit the audit entry) through a StepRecorder,
so that what was deleted and what is recorded never disagree, whatever happens
between two units: a batch that fails or is cancelled rolls back with its record.

One cutoff per table and run (the run ledger's instant), typed in every statement as the
column's own type (`CAST(:cutoff AS timestamptz)` or `... AS timestamp`; bounds and
frontiers alike): an untyped parameter takes the column's type from PostgreSQL, and a
`timestamp` one silently drops the offset of the instant it was given. For a `timestamp`
column the cutoff is converted once, to its wall-clock time in the session's TimeZone
(`column_cutoff`); a row exactly at the cutoff is kept (`col < cutoff`).

Row by row, oldest first, keyset-paginated on the column's index so that no batch
rescans the index entries earlier batches left dead. Two batch forms:

- exact: find the (n+1)-th oldest expired row (an index-only probe) and delete
  the n rows below it. The probe costs about as much as the DELETE (it walks the
  same n index entries), so with batches of WINDOW_MIN_SIZE rows or more (where
  it costs more than a round trip) it is used only where it is needed: the
  first two batches of a relation, after an empty window, and after a window
  batch that overran.

      SELECT col FROM ONLY t WHERE col < :cutoff AND col >= :frontier
       ORDER BY col OFFSET n LIMIT 1                              -- -> :upper
      DELETE FROM ONLY t WHERE col < :cutoff AND col >= :frontier AND col < :upper
      (each parameter cast to the column's type, as everywhere below)

- window: delete the time window that the last batch's density says holds
  0.8 n rows, in one statement (`... AND col < :frontier + 0.8 n * time_per_row`).
  A window that holds more than n rows (the data got denser) is rolled back and
  redone as an exact batch, so no batch deletes more than n rows; one that holds
  far more (a burst) is cancelled sooner by a statement timeout of 1.5x the batch
  time target, so a density jump costs one short rolled-back transaction, never a
  long one. An empty window (a gap in the data) goes on as an exact batch in the
  same transaction.

The DELETEs re-check every row against the cutoff, visit each row once and return
nothing, which makes them about twice as fast as deleting by a list of ctids. The
ctid form (`DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... LIMIT n)) AND col <
:cutoff`) remains for what a range cannot do: more than n rows with one timestamp,
a table without an index on the column (unordered: a sequential scan that stops at
the limit beats a full sort per batch), and stepping around locked rows. No row
locks are taken up front (FOR UPDATE would write every row twice and double the
WAL); a batch that meets a locked row (lock_timeout, deadlock) is retried with FOR
UPDATE SKIP LOCKED, and a relation still locked after that (someone holds a table
lock) is left for the next run, never failing this one; a waiting ROW EXCLUSIVE
request queues no reader or writer behind it. A batch cancelled by its
statement_timeout is retried at half the size, down to a floor of MIN_BATCH_SIZE
rows; only a batch cancelled at the floor fails the run. Batches aim at
`batch_target_ms` (50 ms) each: the first takes START_BATCH_SIZE rows, the next
ones double while under half the target, up to the policy's batchSize (the most
rows a batch deletes), and a slower batch (cold pages, a busy server) makes the
next one smaller.

Partitions wholly older than the cutoff are detached and dropped in one transaction
(so a crash leaves either the partition or nothing, never a detached orphan; DETACH
... CONCURRENTLY cannot run inside a transaction, and is refused when a DEFAULT
partition exists). The partition's own locks are taken first, so that waiting for a
reader of that partition queues nothing on the parent; then DETACH holds ACCESS
EXCLUSIVE on the parent for about a millisecond, waiting at most lock_timeout for
it (every writer of the parent queues behind that wait). A lock not had in time
leaves the partition for the next run, and one not had on the parent leaves every
remaining partition of that parent too, so writers wait out one lock_timeout, not
one per partition. The boundary partition is pruned row by row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import pg8000.native
from partition_plan import PartitionDrop, plan_partitions
from pg8000.exceptions import DatabaseError
from policy_catalog import Relation, Target

from ops.db import Database
from ops.log import logger
from ops.sql import set_local_timeouts, sqlstate
from ops.timestamps import PgTimestamp
from ops.tracing import span

LOCK_CONFLICTS = ("55P03", "40P01")  # lock_not_available, deadlock_detected
QUERY_CANCELED = "57014"  # statement_timeout
MAX_LOCK_RETRIES = 3
RETRY_BACKOFF_S = 0.1
MIN_BATCH_SIZE = 100  # the floor of halving a cancelled batch (or the policy's batchSize)
# Waiting this long for an old partition's SHARE UPDATE EXCLUSIVE lock stalls no query
# and outlasts deadlock_timeout (1 s), after which an autovacuum in the way is cancelled.
PARTITION_LOCK_TIMEOUT_MS = 2_000
# A window batch may take this many times the batch time target before it is cancelled
# and redone exactly (a burst of rows in its window).
WINDOW_OVERRUN = 1.5
# A window aims at this share of the batch size, so that ordinary ups and downs of the
# data's density stay under the size (a window over it is rolled back and redone).
WINDOW_FILL = 0.8
OVERFULL = "overfull"  # a batch failure code: a window held more than the batch size
# Below this batchSize the probe costs less than a round trip: every batch is exact.
WINDOW_MIN_SIZE = 1_000
# A relation's first batch takes at most this many rows; batches double from there while
# they take under half their time target (cold pages make the first ones the slowest).
START_BATCH_SIZE = 1_000


@dataclass(frozen=True)
class Limits:
    lock_timeout_ms: int
    statement_timeout_ms: int
    batch_target_ms: int = 50  # how long one batch's transaction should take

    @property
    def window_timeout_ms(self) -> int:
        return max(1, min(self.statement_timeout_ms, int(self.batch_target_ms * WINDOW_OVERRUN)))


def next_batch_size(size: int, elapsed_ms: float, target_ms: float, maximum: int) -> int:
    """Steer batches toward `target_ms` each, so that cold pages or a busy server shorten
    batches instead of lengthening transactions: shrink in proportion when a batch ran
    over, double when it took under half the target; never above the policy's batchSize."""
    if elapsed_ms > target_ms:
        return max(min(MIN_BATCH_SIZE, maximum), int(size * target_ms / elapsed_ms))
    if elapsed_ms < target_ms / 2:
        return min(maximum, size * 2)
    return size


class Ending(StrEnum):
    """Where a step leaves its table in this invocation."""

    MORE = "more"  # more steps follow
    PAUSED = "paused"  # the invocation's last step on the table; rows are left (time, locks)
    DONE = "done"  # the last step: nothing older than the cutoff is left


@dataclass(frozen=True)
class Step:
    """One committed unit of work on a table."""

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


@dataclass
class Skips:
    """What a lock kept this invocation from: left for the next run, never failing this one."""

    partitions: list[str] = field(default_factory=list)  # not dropped
    relations: list[str] = field(default_factory=list)  # not pruned row by row

    def __bool__(self) -> bool:
        return bool(self.partitions or self.relations)


class StepRecorder(Protocol):
    def fence(self, conn: pg8000.native.Connection) -> None:
        """Raise unless this run may still work (before taking locks others would queue on)."""

    def record(self, conn: pg8000.native.Connection, step: Step) -> None:
        """Book the step in the same transaction as the work; raise (so it rolls back)
        unless this run may still work."""


class NoRecorder:
    """For pruning without a run (tests, tools): no fence, no bookkeeping."""

    def fence(self, conn: pg8000.native.Connection) -> None:
        pass

    def record(self, conn: pg8000.native.Connection, step: Step) -> None:
        pass


class WindowOverfull(Exception):
    """A window batch found more rows than the batch size: roll it back, redo it exactly."""


def _failure_code(exc: BaseException) -> str | None:
    """What `Batches.adapt` is told: the SQLSTATE, OVERFULL, or None for anything else."""
    return OVERFULL if isinstance(exc, WindowOverfull) else sqlstate(exc) or None


@dataclass
class Batches:
    """Where row-by-row pruning of one relation stands between its batches."""

    size: int
    floor: int  # a batch cancelled at this size fails the run
    frontier: Any = None  # every expired row below it is gone (ordered mode)
    skip_locked: bool = False  # a batch met a locked row: step around such rows from now on
    row_span: timedelta | None = None  # time per row the last batch measured: window mode
    windows: bool = False  # window batches allowed (an index on the column, big batches)

    @property
    def windowed(self) -> bool:
        return self.windows and self.row_span is not None and not self.skip_locked

    def adapt(self, code: str | None) -> bool:
        """Change course after a batch failed with `code`; False if nothing can get around it."""
        if code in LOCK_CONFLICTS:
            self.skip_locked = True
            return True
        if code in (QUERY_CANCELED, OVERFULL) and self.windowed:  # denser: redo exactly
            self.row_span = None
            if code == QUERY_CANCELED:  # and smaller: it ran 1.5x over its time target
                self.size = max(self.floor, self.size // 2)
            return True
        if code == QUERY_CANCELED and self.size > self.floor:
            self.size = max(self.floor, self.size // 2)
            return True
        return False


@dataclass(frozen=True)
class Batch:
    """What one batch did, applied to `Batches` once its transaction has committed."""

    rows: int
    done: bool  # nothing expired is left in the relation
    frontier: Any
    row_span: timedelta | None = None  # None: the next batch is an exact one


# The session's wall-clock time of an instant: how a `timestamp` column is read. The cast
# uses the session's zone itself (`AT TIME ZONE current_setting(...)` would parse its name
# again, and not every value of the setting parses there).
_WALL_CLOCK = "SELECT CAST(CAST(:c AS timestamptz) AS timestamp)"


def column_cutoff(
    run: Callable[..., list[list[Any]]], target: Target, cutoff: PgTimestamp
) -> PgTimestamp:
    """The run's cutoff (an instant) as a value of the column's type, once per table and
    invocation: itself for `timestamptz`; for `timestamp`, its wall-clock time in the
    TimeZone of the run's session (`run`: a connection's or the database's `run`)."""
    if target.sql_type == "timestamptz":
        return cutoff
    wall_clock: PgTimestamp = run(_WALL_CLOCK, c=cutoff)[0][0]
    return wall_clock


def _keyset(
    column: str, cutoff: PgTimestamp, b: Batches, ordered: bool, sql_type: str
) -> tuple[str, dict[str, Any]]:
    """The filter both batch forms add after `column < :cutoff`, and its parameters.

    Ordered mode resumes at the frontier, so no batch rescans what earlier ones deleted.
    """
    if not ordered or b.frontier is None:
        return "", {"cutoff": cutoff}
    return (
        f" AND {column} >= CAST(:frontier AS {sql_type})",
        {"cutoff": cutoff, "frontier": b.frontier},
    )


def _ctid_batch(
    conn: pg8000.native.Connection,
    relation: str,
    column: str,
    b: Batches,
    ordered: bool,
    keyset: tuple[str, dict[str, Any]],
    sql_type: str,
) -> Batch:
    frontier, params = keyset
    order = f" ORDER BY {column}" if ordered else ""
    lock = " FOR UPDATE SKIP LOCKED" if b.skip_locked else ""
    expired = f"{column} < CAST(:cutoff AS {sql_type})"
    rows, newest = conn.run(
        f"WITH gone AS (DELETE FROM ONLY {relation} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM ONLY {relation} WHERE {expired}{frontier}{order} "
        f"LIMIT :n{lock})) AND {expired} RETURNING {column}) "
        f"SELECT count(*), max({column}) FROM gone",
        n=b.size,
        **params,
    )[0]
    return Batch(int(rows), rows < b.size, newest if ordered and newest is not None else b.frontier)


def _span(lower: Any, upper: Any, rows: int) -> timedelta | None:
    """Time per row over [lower, upper), when that is a measurable, positive duration."""
    if not (rows and isinstance(lower, datetime) and isinstance(upper, datetime)):
        return None
    if (lower.tzinfo is None) != (upper.tzinfo is None) or upper <= lower:
        return None
    return (upper - lower) / rows


def _window_batch(
    conn: pg8000.native.Connection,
    relation: str,
    column: str,
    cutoff: datetime,
    b: Batches,
    sql_type: str,
) -> Batch:
    """Delete [frontier, frontier + WINDOW_FILL * size rows' worth of time).
    Raises WindowOverfull (rolling the batch back) above `b.size` rows."""
    assert b.row_span is not None
    upper = b.frontier + b.row_span * max(1, int(b.size * WINDOW_FILL))
    last = upper >= cutoff
    conn.run(
        f"DELETE FROM ONLY {relation} WHERE {column} >= CAST(:frontier AS {sql_type}) "
        f"AND {column} < CAST(:upper AS {sql_type})",
        frontier=b.frontier,
        upper=cutoff if last else upper,
    )
    rows = int(conn.row_count)
    if rows > b.size:
        raise WindowOverfull(f"{rows} rows in a window meant for {b.size}")
    return Batch(rows, last, upper, None if last else _span(b.frontier, upper, rows))


def delete_batch(
    conn: pg8000.native.Connection,
    relation: str,
    column: str,
    cutoff: PgTimestamp,
    b: Batches,
    ordered: bool,
    sql_type: str,
) -> Batch:
    """Delete about `b.size` of the oldest expired rows.

    `cutoff` is a value of the column's type (`column_cutoff`), `sql_type` that type.
    The caller applies the result to `b` once the transaction has committed.
    """
    if ordered and b.windowed and isinstance(cutoff, datetime):
        window = _window_batch(conn, relation, column, cutoff, b, sql_type)
        if window.rows or window.done:
            return window
        # An empty window (a gap in the data): on from its end, exactly, in this transaction.
        b = replace(b, frontier=window.frontier, row_span=None)
    keyset = _keyset(column, cutoff, b, ordered, sql_type)
    if not ordered or b.skip_locked:
        return _ctid_batch(conn, relation, column, b, ordered, keyset, sql_type)
    after, params = keyset
    expired = f"{column} < CAST(:cutoff AS {sql_type}){after}"
    probe = conn.run(
        f"SELECT {column} FROM ONLY {relation} WHERE {expired} "
        f"ORDER BY {column} OFFSET :skip LIMIT 1",
        skip=b.size,
        **params,
    )
    if not probe:  # b.size or fewer left: the last batch
        conn.run(f"DELETE FROM ONLY {relation} WHERE {expired}", **params)
        return Batch(int(conn.row_count), True, b.frontier)
    upper = probe[0][0]
    conn.run(
        f"DELETE FROM ONLY {relation} WHERE {expired} AND {column} < CAST(:upper AS {sql_type})",
        upper=upper,
        **params,
    )
    rows = int(conn.row_count)
    if rows:
        return Batch(rows, False, upper, _span(b.frontier, upper, rows))
    # b.size rows or more share one timestamp: a range cannot split them, a LIMIT can.
    return _ctid_batch(conn, relation, column, b, ordered, keyset, sql_type)


@dataclass(frozen=True)
class Survey:
    """What a dry run reports for one table."""

    expired_rows: int
    oldest: PgTimestamp | None  # the oldest value, expired or not; None: no row has one
    partitions: list[str]


def survey(conn: pg8000.native.Connection, target: Target, cutoff: PgTimestamp) -> Survey:
    """What a run would delete, counted by the statements' own filter; `cutoff` is the
    run's instant."""
    rel = target.relation.sql if target.partitioned else f"ONLY {target.relation.sql}"
    col = target.column_sql
    cutoff = column_cutoff(conn.run, target, cutoff)
    count, oldest = conn.run(
        f"SELECT (SELECT count(*) FROM {rel} WHERE {col} < CAST(:cutoff AS {target.sql_type})), "
        f"(SELECT min({col}) FROM {rel})",
        cutoff=cutoff,
    )[0]
    drops = plan_partitions(conn, target, cutoff).drops if target.partitioned else []
    return Survey(int(count), oldest, [d.partition.display for d in drops])


def _locked(relation: str, table: str, lock: str) -> None:
    logger.warning(
        f"{relation} is locked by another session; left for the next run",
        extra={
            "type": "retention_warning",
            "warning": "locked",
            "table": table,
            "relation": relation,
            "lock": lock,
        },
    )


class TablePruner:
    """Prunes one table down to `cutoff` until done or `keep_going()` says stop.

    `run()` returns True when nothing older than the cutoff is left. Every committed
    unit goes through `recorder.record`; the last one is marked `final`. When no unit
    is committed at all (nothing to do, or no time to start), the caller audits.
    """

    def __init__(
        self,
        db: Database,
        target: Target,
        cutoff: PgTimestamp,
        limits: Limits,
        keep_going: Callable[[], bool],
        recorder: StepRecorder | None = None,
        skips: Skips | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.cutoff = cutoff  # the run's instant
        self._cutoff: PgTimestamp = cutoff  # in the column's type, from `run` on
        self.limits = limits
        self.keep_going = keep_going
        self.recorder = recorder or NoRecorder()
        # What locks kept us from (a long reader, an anti-wraparound autovacuum, DDL):
        # left for the next run rather than failing this one or queueing writers.
        self.skips = skips if skips is not None else Skips()
        self._locked_parents: set[int] = set()

    def run(self) -> bool:
        if not self.keep_going():
            return False
        self._cutoff = column_cutoff(self.db.run, self.target, self.cutoff)
        units: list[PartitionDrop | Relation] = [self.target.relation]
        if self.target.partitioned:  # whole partitions first, then the rest row by row
            with self.db.transaction(statement_timeout_ms=self.limits.statement_timeout_ms) as conn:
                plan = plan_partitions(conn, self.target, self._cutoff)
            units = [*plan.drops, *plan.row_by_row]
        while units:
            unit = units.pop(0)
            last_unit = not units  # the table's last unit of work carries its audit entry
            if isinstance(unit, PartitionDrop):
                finished = self._drop(unit, last_unit)
            else:
                finished = self._prune_rows(unit, last_unit)
            if not finished:  # stopped for the deadline
                return False
        return not self.skips

    # -- units ------------------------------------------------------------------
    def _prune_rows(self, relation: Relation, last_unit: bool) -> bool:
        size = self.target.policy.batch_size
        # Windows add time to the cutoff's value: not to a text one (a value no datetime holds).
        windows = (
            self.target.indexed and size >= WINDOW_MIN_SIZE and isinstance(self._cutoff, datetime)
        )
        b = Batches(
            size=min(size, START_BATCH_SIZE), floor=min(MIN_BATCH_SIZE, size), windows=windows
        )
        while True:
            started = time.monotonic()
            try:
                committed = self._commit_batch(relation, b, last_unit)
            except DatabaseError as exc:
                if sqlstate(exc) not in LOCK_CONFLICTS:
                    raise
                # Locked even stepping around locked rows: a table lock (DDL, LOCK TABLE).
                self.skips.relations.append(relation.display)
                _locked(relation.display, self.target.table, "table")
                return True  # go on with the other units
            if committed is None:
                return False
            batch, final = committed
            b.frontier, b.row_span = batch.frontier, batch.row_span
            b.size = next_batch_size(
                b.size,
                (time.monotonic() - started) * 1000,
                self.limits.batch_target_ms,
                self.target.policy.batch_size,
            )
            if final:
                return batch.done and last_unit
            if batch.done:
                return True

    def _commit_batch(
        self, relation: Relation, b: Batches, last_unit: bool
    ) -> tuple[Batch, bool] | None:
        """One batch and its record in one transaction: what it did and whether it was the
        invocation's last step on the table. A failed batch is retried as `b.adapt` says
        (lock conflicts at most MAX_LOCK_RETRIES times, with backoff); None if out of time."""
        conflicts = 0
        while True:
            timeout = (
                self.limits.window_timeout_ms if b.windowed else self.limits.statement_timeout_ms
            )
            mode = "window" if b.windowed else "exact"
            try:
                with (
                    span("retention batch", table=self.target.table, mode=mode) as traced,
                    self.db.transaction(
                        statement_timeout_ms=timeout, lock_timeout_ms=self.limits.lock_timeout_ms
                    ) as conn,
                ):
                    batch = delete_batch(
                        conn,
                        relation.sql,
                        self.target.column_sql,
                        self._cutoff,
                        b,
                        self.target.indexed,
                        self.target.sql_type,
                    )
                    step = Step(rows=batch.rows, batches=1)
                    traced.set(rows=batch.rows)
                    return batch, self._book(conn, step, batch.done and last_unit)
            except (DatabaseError, WindowOverfull) as exc:
                code = _failure_code(exc)
                conflict = code in LOCK_CONFLICTS
                if (conflict and conflicts >= MAX_LOCK_RETRIES) or not b.adapt(code):
                    raise
            if conflict:
                conflicts += 1
                time.sleep(RETRY_BACKOFF_S * 2**conflicts)
            if not self.keep_going():
                return None

    def _drop(self, drop: PartitionDrop, last_unit: bool) -> bool:
        """Detach and drop one partition in one transaction; a lock not had in time leaves it
        (and, if the parent's, every remaining partition of that parent) for the next run."""
        part, parent = drop.partition.sql, drop.parent.sql
        if drop.parent.oid in self._locked_parents:  # would queue writers again: next run
            self.skips.partitions.append(drop.partition.display)
            return True
        waiting_for = "partition"
        try:
            with (
                span("retention partition drop", table=self.target.table),
                self.db.transaction(
                    statement_timeout_ms=self.limits.statement_timeout_ms,
                    lock_timeout_ms=self.limits.lock_timeout_ms,
                ) as conn,
            ):
                self.recorder.fence(conn)  # no lock on the parent unless this run may still work
                estimate = self._lock_partition(conn, drop)
                # ACCESS EXCLUSIVE on the parent queues every query behind it while it waits:
                # lock_timeout bounds that wait.
                waiting_for = "parent"
                conn.run(f"ALTER TABLE {parent} DETACH PARTITION {part}; DROP TABLE {part}")
                step = Step(rows=0, partition=drop.partition.display, partition_rows=estimate)
                final = self._book(conn, step, last_unit)
        except DatabaseError as exc:  # not retried: a lock not had is for the next run
            if sqlstate(exc) not in (*LOCK_CONFLICTS, QUERY_CANCELED):
                raise
            self.skips.partitions.append(drop.partition.display)
            if waiting_for == "parent":
                self._locked_parents.add(drop.parent.oid)
            _locked(drop.partition.display, self.target.table, waiting_for)
            return True  # go on with the other partitions
        return last_unit or not final

    def _lock_partition(self, conn: pg8000.native.Connection, drop: PartitionDrop) -> int:
        """Lock the partition, queuing nobody on the parent; returns its rows (estimated).

        First keep autovacuum off it without blocking anyone: SHARE UPDATE EXCLUSIVE lets
        reads and writes through, and waiting longer than deadlock_timeout (1 s) for it gets
        a running autovacuum cancelled. Then the partition itself: waiting for its readers
        queues nobody on the parent.
        """
        part = drop.partition.sql
        # Below the statement timeout, so that a lock not had is a lock timeout.
        vacuum_lock_ms = min(PARTITION_LOCK_TIMEOUT_MS, self.limits.statement_timeout_ms // 2)
        conn.run(
            f"{set_local_timeouts(lock_timeout_ms=max(1, vacuum_lock_ms))}; "
            f"LOCK TABLE {part} IN SHARE UPDATE EXCLUSIVE MODE; "
            f"{set_local_timeouts(lock_timeout_ms=int(self.limits.lock_timeout_ms))}; "
            f"LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE"
        )
        # The planner's row count, not count(*): scanning a partition only to drop it would
        # make a drop cost as much as reading the data. Exact after VACUUM/ANALYZE.
        ((estimate,),) = conn.run(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint "
            "FROM pg_partition_tree(:oid) t JOIN pg_class c ON c.oid = t.relid "
            "WHERE t.isleaf",
            oid=drop.partition.oid,
        )
        return int(estimate)

    # -- plumbing ---------------------------------------------------------------
    def _book(self, conn: pg8000.native.Connection, step: Step, last: bool) -> bool:
        """Record the step; returns whether it is this invocation's last for the table."""
        if last and not self.skips:
            ending = Ending.DONE
        elif not self.keep_going():
            ending = Ending.PAUSED
        else:
            ending = Ending.MORE
        step = replace(step, ending=ending)
        self.recorder.record(conn, step)
        return step.final
