"""Pruning one table: drop wholly old partitions, then delete the rest in keyset batches.

Every unit of work (a partition drop, a batch) is its own transaction with SET LOCAL
lock_timeout and statement_timeout, and books itself through a StepRecorder (lease
renewal as a fence, progress, on the last unit the audit entry) in that transaction:
what was deleted and what is recorded never disagree.

The cutoff is cast to the column's type in every statement (an untyped parameter takes
the column's type, and a `timestamp` one drops the instant's offset); for a `timestamp`
column it is the cutoff's wall-clock time in the session's TimeZone (`column_cutoff`). A
row exactly at the cutoff is kept.

Batches go oldest first, resuming at the frontier so that none rescans the index entries
earlier ones left dead: probe for the (n+1)-th oldest expired row, delete the n below it.
The ctid form (`DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... LIMIT n))`) serves what a
range cannot: more than n rows with one timestamp, a table without an index on the column,
and stepping around locked rows (FOR UPDATE SKIP LOCKED, after a batch met one; no row
locks up front: they would write every row twice). A relation still locked after that is
left for the next run. A batch cancelled by its statement_timeout is redone at half the
size; only one cancelled at MIN_BATCH_SIZE fails the run. Batches aim at batch_target_ms:
from START_BATCH_SIZE rows, doubling while under half the target, up to batchSize.

A partition is detached and dropped in one transaction (a crash leaves the partition or
nothing; DETACH CONCURRENTLY cannot run in one). Its own locks come first, so waiting for
its readers queues nobody on the parent; DETACH then waits at most lock_timeout for the
parent's ACCESS EXCLUSIVE. A lock not had leaves the partition for the next run, and one
not had on the parent leaves that parent's other partitions too (writers wait out one
lock_timeout, not one per partition).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError

from ops.db import Database
from ops.log import logger
from ops.sql import set_local_timeouts, sqlstate
from ops.timestamps import PgTimestamp
from ops.tracing import span
from retention import model as m
from retention.partition_plan import plan_partitions

LOCK_CONFLICTS = ("55P03", "40P01")  # lock_not_available, deadlock_detected
QUERY_CANCELED = "57014"  # statement_timeout
MAX_LOCK_RETRIES = 3
RETRY_BACKOFF_S = 0.1
MIN_BATCH_SIZE = 100  # the floor of halving a cancelled batch (or the policy's batchSize)
# Waiting this long for an old partition's SHARE UPDATE EXCLUSIVE lock stalls no query
# and outlasts deadlock_timeout (1 s), after which an autovacuum in the way is cancelled.
PARTITION_LOCK_TIMEOUT_MS = 2_000
# A relation's first batch takes at most this many rows; batches double from there while
# they take under half their time target (cold pages make the first ones the slowest).
START_BATCH_SIZE = 1_000


def next_batch_size(size: int, elapsed_ms: float, target_ms: float, maximum: int) -> int:
    """Steer batches toward `target_ms` each: shrink in proportion when a batch ran over,
    double when it took under half the target; never above the policy's batchSize."""
    if elapsed_ms > target_ms:
        return max(min(MIN_BATCH_SIZE, maximum), int(size * target_ms / elapsed_ms))
    if elapsed_ms < target_ms / 2:
        return min(maximum, size * 2)
    return size


def adapt(cursor: m.KeysetCursor, code: str | None) -> bool:
    """Change course after a batch failed with SQLSTATE `code`; False if nothing can help."""
    if code in LOCK_CONFLICTS:
        cursor.skip_locked = True
        return True
    if code == QUERY_CANCELED and cursor.size > cursor.floor:
        cursor.size = max(cursor.floor, cursor.size // 2)
        return True
    return False


class NoRecorder:
    """For pruning without a run (tests, tools): no fence, no bookkeeping."""

    def fence(self, conn: pg8000.native.Connection) -> None:
        pass

    def record(self, conn: pg8000.native.Connection, step: m.Step) -> None:
        pass


# The session's wall-clock time of an instant: how a `timestamp` column is read. The cast
# uses the session's zone itself (`AT TIME ZONE current_setting(...)` would parse its name
# again, and not every value of the setting parses there).
_WALL_CLOCK = "SELECT CAST(CAST(:c AS timestamptz) AS timestamp)"


def column_cutoff(
    run: Callable[..., list[list[Any]]], target: m.Target, cutoff: PgTimestamp
) -> PgTimestamp:
    """The run's cutoff (an instant) as a value of the column's type, once per table and
    invocation: itself for `timestamptz`; for `timestamp`, its wall-clock time in the
    TimeZone of the run's session (`run`: a connection's or the database's `run`)."""
    if target.sql_type == "timestamptz":
        return cutoff
    wall_clock: PgTimestamp = run(_WALL_CLOCK, c=cutoff)[0][0]
    return wall_clock


def delete_batch(
    conn: pg8000.native.Connection,
    target: m.Target,
    relation: str,
    cutoff: PgTimestamp,
    cursor: m.KeysetCursor,
) -> m.BatchResult:
    """Delete `cursor.size` of the oldest expired rows at most (any, unless `ordered`).

    `cutoff` is a value of the column's type (`column_cutoff`). Ordered (the column is
    indexed), it resumes at the frontier, so no batch rescans what earlier ones deleted.
    """
    column, sql_type, ordered = target.column_sql, target.sql_type, target.indexed
    expired = f"{column} < CAST(:cutoff AS {sql_type})"
    params: dict[str, Any] = {"cutoff": cutoff}
    if ordered and cursor.frontier is not None:
        expired += f" AND {column} >= CAST(:frontier AS {sql_type})"
        params["frontier"] = cursor.frontier
    if ordered and not cursor.skip_locked:
        probe = conn.run(
            f"SELECT {column} FROM ONLY {relation} WHERE {expired} "
            f"ORDER BY {column} OFFSET :skip LIMIT 1",
            skip=cursor.size,
            **params,
        )
        if not probe:  # cursor.size or fewer left: the last batch
            conn.run(f"DELETE FROM ONLY {relation} WHERE {expired}", **params)
            return m.BatchResult(int(conn.row_count), True, cursor.frontier)
        upper = probe[0][0]
        conn.run(
            f"DELETE FROM ONLY {relation} WHERE {expired} "
            f"AND {column} < CAST(:upper AS {sql_type})",
            upper=upper,
            **params,
        )
        if rows := int(conn.row_count):
            return m.BatchResult(rows, False, upper)
        # cursor.size rows or more share one timestamp: a range cannot split them, a LIMIT can.
    order = f" ORDER BY {column}" if ordered else ""
    lock = " FOR UPDATE SKIP LOCKED" if cursor.skip_locked else ""
    rows, newest = conn.run(
        f"WITH gone AS (DELETE FROM ONLY {relation} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM ONLY {relation} WHERE {expired}{order} "
        f"LIMIT :n{lock})) AND {column} < CAST(:cutoff AS {sql_type}) RETURNING {column}) "
        f"SELECT count(*), max({column}) FROM gone",
        n=cursor.size,
        **params,
    )[0]
    frontier = newest if ordered and newest is not None else cursor.frontier
    return m.BatchResult(int(rows), rows < cursor.size, frontier)


def survey(conn: pg8000.native.Connection, target: m.Target, cutoff: PgTimestamp) -> m.Survey:
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
    return m.Survey(int(count), oldest, [d.partition.display for d in drops])


def _locked(relation: str, table: str, lock: str) -> None:
    fields = {"warning": "locked", "table": table, "relation": relation, "lock": lock}
    logger.warning(
        f"{relation} is locked by another session; left for the next run",
        extra={"type": "retention_warning", **fields},
    )


class TablePruner:
    """Prunes one table down to `cutoff` until done or `keep_going()` says stop; `run()`
    is True when nothing older is left. The last committed unit is marked `final`; when
    none commits (nothing to do, no time), the caller audits."""

    def __init__(
        self,
        db: Database,
        target: m.Target,
        cutoff: PgTimestamp,
        limits: m.Limits,
        keep_going: Callable[[], bool],
        recorder: m.StepRecorder | None = None,
        skips: m.Skips | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.cutoff = cutoff  # the run's instant
        self._cutoff: PgTimestamp = cutoff  # in the column's type, from `run` on
        self.limits = limits
        self.keep_going = keep_going
        self.recorder = recorder or NoRecorder()
        self.skips = skips if skips is not None else m.Skips()
        self._locked_parents: set[int] = set()

    def run(self) -> bool:
        if not self.keep_going():
            return False
        self._cutoff = column_cutoff(self.db.run, self.target, self.cutoff)
        units: list[m.PartitionDrop | m.Relation] = [self.target.relation]
        if self.target.partitioned:  # whole partitions first, then the rest row by row
            with self.db.transaction(statement_timeout_ms=self.limits.statement_timeout_ms) as conn:
                plan = plan_partitions(conn, self.target, self._cutoff)
            units = [*plan.drops, *plan.row_by_row]
        while units:
            unit = units.pop(0)
            last_unit = not units  # the table's last unit of work carries its audit entry
            if isinstance(unit, m.PartitionDrop):
                finished = self._drop(unit, last_unit)
            else:
                finished = self._prune_rows(unit, last_unit)
            if not finished:  # stopped for the deadline
                return False
        return not self.skips

    def _prune_rows(self, relation: m.Relation, last_unit: bool) -> bool:
        size = self.target.policy.batch_size
        cursor = m.KeysetCursor(size=min(size, START_BATCH_SIZE), floor=min(MIN_BATCH_SIZE, size))
        while True:
            started = time.monotonic()
            try:
                committed = self._commit_batch(relation, cursor, last_unit)
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
            cursor.frontier = batch.frontier
            cursor.size = next_batch_size(
                cursor.size,
                (time.monotonic() - started) * 1000,
                self.limits.batch_target_ms,
                size,
            )
            if final:
                return batch.done and last_unit
            if batch.done:
                return True

    def _commit_batch(
        self, relation: m.Relation, cursor: m.KeysetCursor, last_unit: bool
    ) -> tuple[m.BatchResult, bool] | None:
        """One batch and its record in one transaction: what it did and whether it was the
        invocation's last step on the table. A failed batch is retried as `adapt` says
        (lock conflicts at most MAX_LOCK_RETRIES times, with backoff); None if out of time."""
        conflicts = 0
        while True:
            # keyset: ordered on the column's index; ctid: unordered or stepping around locks
            mode = "keyset" if self.target.indexed and not cursor.skip_locked else "ctid"
            try:
                with (
                    span("retention batch", table=self.target.table, mode=mode) as traced,
                    self.db.transaction(
                        statement_timeout_ms=self.limits.statement_timeout_ms,
                        lock_timeout_ms=self.limits.lock_timeout_ms,
                    ) as conn,
                ):
                    batch = delete_batch(conn, self.target, relation.sql, self._cutoff, cursor)
                    step = m.Step(rows=batch.rows, batches=1)
                    traced.set(rows=batch.rows)
                    return batch, self._book(conn, step, batch.done and last_unit)
            except DatabaseError as exc:
                code = sqlstate(exc) or None
                conflict = code in LOCK_CONFLICTS
                if (conflict and conflicts >= MAX_LOCK_RETRIES) or not adapt(cursor, code):
                    raise
            if conflict:
                conflicts += 1
                time.sleep(RETRY_BACKOFF_S * 2**conflicts)
            if not self.keep_going():
                return None

    def _drop(self, drop: m.PartitionDrop, last_unit: bool) -> bool:
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
                step = m.Step(rows=0, partition=drop.partition.display, partition_rows=estimate)
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

    def _lock_partition(self, conn: pg8000.native.Connection, drop: m.PartitionDrop) -> int:
        """Lock the partition, queuing nobody on the parent; returns its rows (estimated).
        First SHARE UPDATE EXCLUSIVE (reads and writes pass; waiting past deadlock_timeout
        gets a running autovacuum cancelled), then ACCESS EXCLUSIVE on the partition alone."""
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

    def _book(self, conn: pg8000.native.Connection, step: m.Step, last: bool) -> bool:
        """Record the step; returns whether it is this invocation's last for the table."""
        if last and not self.skips:
            ending = m.Ending.DONE
        elif not self.keep_going():
            ending = m.Ending.PAUSED
        else:
            ending = m.Ending.MORE
        step = replace(step, ending=ending)
        self.recorder.record(conn, step)
        return step.final
