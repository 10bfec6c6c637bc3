"""Deleting what one policy says is expired, in transactions short enough for live traffic.

Every unit of work is its own transaction with `SET LOCAL lock_timeout` and
`statement_timeout`, and carries the run's bookkeeping (lease renewal as a fence,
progress, and on the last unit the audit entry) through a StepRecorder, so that
what was deleted and what is recorded never disagree, whatever happens between
two units.

Row by row, oldest first, keyset-paginated on the column's index so that no batch
rescans the index entries earlier batches left dead. Each batch finds the
(n+1)-th oldest expired row (an index-only probe) and deletes the n rows below it:

    SELECT col FROM ONLY t WHERE col < :cutoff AND col >= :frontier
     ORDER BY col OFFSET n LIMIT 1                              -- -> :upper
    DELETE FROM ONLY t WHERE col < :cutoff AND col >= :frontier AND col < :upper

The DELETE re-checks every row against the cutoff itself, visits each row once
and returns nothing, which makes it about twice as fast as deleting by a list of
ctids. The ctid form (`DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... LIMIT n))
AND col < :cutoff`) remains for what a range cannot do: more than n rows with one
timestamp, a table without an index on the column (unordered: a sequential scan
that stops at the limit beats a full sort per batch), and stepping around locked
rows. No row locks are taken up front (FOR UPDATE would write every row twice and
double the WAL); a batch that meets a locked row (lock_timeout, deadlock) is
retried with FOR UPDATE SKIP LOCKED, and one cancelled by statement_timeout is
retried at half the size. Batches aim at `batch_target_ms` (50 ms) each: the
policy's batchSize is the most rows a batch takes, and a slower batch (cold pages,
a busy server) makes the next one smaller.

Partitions wholly older than the cutoff are detached and dropped in one
transaction (so a crash leaves either the partition or nothing, never a detached
orphan; DETACH ... CONCURRENTLY cannot run inside a transaction, and is refused
when a DEFAULT partition exists), holding ACCESS EXCLUSIVE on the parent for about
a millisecond; the boundary partition is pruned row by row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import pg8000.native
from partition_plan import PartitionDrop, plan_partitions
from pg8000.exceptions import DatabaseError
from policy_catalog import Relation, Target

from ops.db import Database

LOCK_CONFLICTS = ("55P03", "40P01")  # lock_not_available, deadlock_detected
QUERY_CANCELED = "57014"  # statement_timeout
MAX_RETRIES = 3
RETRY_BACKOFF_S = 0.1
MIN_BATCH_SIZE = 100
# Waiting this long for an old partition's SHARE UPDATE EXCLUSIVE lock stalls no query
# and outlasts deadlock_timeout (1 s), after which an autovacuum in the way is cancelled.
PARTITION_LOCK_TIMEOUT_MS = 2_000

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    lock_timeout_ms: int
    statement_timeout_ms: int
    batch_target_ms: int = 50  # how long one batch's transaction should take


def next_batch_size(size: int, elapsed_ms: float, target_ms: float, maximum: int) -> int:
    """Steer batches toward `target_ms` each, so that cold pages or a busy server shorten
    batches instead of lengthening transactions: shrink in proportion when a batch ran
    over, double when it took under half the target; never above the policy's batchSize."""
    if elapsed_ms > target_ms:
        return max(min(MIN_BATCH_SIZE, maximum), int(size * target_ms / elapsed_ms))
    if elapsed_ms < target_ms / 2:
        return min(maximum, size * 2)
    return size


@dataclass(frozen=True)
class Step:
    """One committed unit of work on a table."""

    rows: int  # deleted row by row (exact)
    batches: int = 0
    partition: str | None = None  # dropped whole
    partition_rows: int = 0  # its rows, as the planner's statistics count them
    final: bool = False  # the last unit of this table in this invocation: carries the audit
    done: bool = False  # nothing older than the cutoff is left in the table


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


def sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return str(exc.args[0].get("C") or "") or None
    return None


def set_local_timeouts(
    conn: pg8000.native.Connection, lock_timeout_ms: int, statement_timeout_ms: int
) -> None:
    """Transaction-scoped (SET LOCAL), so nothing leaks to the pooled connection.

    Integers only, in one simple-protocol round trip (no parameters to bind).
    """
    conn.run(
        f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}; "
        f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"
    )


@dataclass
class Batches:
    """Where row-by-row pruning of one relation stands between its batches."""

    size: int
    frontier: Any = None  # every expired row below it is gone (ordered mode)
    skip_locked: bool = False  # a batch met a locked row: step around such rows from now on


def _keyset(column: str, cutoff: datetime, b: Batches, ordered: bool) -> tuple[str, dict[str, Any]]:
    """The filter both batch forms add after `column < :cutoff`, and its parameters.

    Ordered mode resumes at the frontier, so no batch rescans what earlier ones deleted.
    """
    if not ordered or b.frontier is None:
        return "", {"cutoff": cutoff}
    return f" AND {column} >= :frontier", {"cutoff": cutoff, "frontier": b.frontier}


def _ctid_batch(
    conn: pg8000.native.Connection,
    relation: str,
    column: str,
    b: Batches,
    ordered: bool,
    keyset: tuple[str, dict[str, Any]],
) -> tuple[int, bool, Any]:
    frontier, params = keyset
    order = f" ORDER BY {column}" if ordered else ""
    lock = " FOR UPDATE SKIP LOCKED" if b.skip_locked else ""
    rows, newest = conn.run(
        f"WITH gone AS (DELETE FROM ONLY {relation} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM ONLY {relation} WHERE {column} < :cutoff{frontier}{order} "
        f"LIMIT :n{lock})) AND {column} < :cutoff RETURNING {column}) "
        f"SELECT count(*), max({column}) FROM gone",
        n=b.size,
        **params,
    )[0]
    return int(rows), rows < b.size, newest if ordered and newest is not None else b.frontier


def delete_batch(
    conn: pg8000.native.Connection,
    relation: str,
    column: str,
    cutoff: datetime,
    b: Batches,
    ordered: bool,
) -> tuple[int, bool, Any]:
    """Delete about `b.size` of the oldest expired rows: (rows, nothing left, new frontier).

    The caller moves `b.frontier` once the transaction has committed.
    """
    keyset = _keyset(column, cutoff, b, ordered)
    if not ordered or b.skip_locked:
        return _ctid_batch(conn, relation, column, b, ordered, keyset)
    after, params = keyset
    probe = conn.run(
        f"SELECT {column} FROM ONLY {relation} WHERE {column} < :cutoff{after} "
        f"ORDER BY {column} OFFSET :skip LIMIT 1",
        skip=b.size,
        **params,
    )
    if not probe:  # b.size or fewer left: the last batch
        conn.run(f"DELETE FROM ONLY {relation} WHERE {column} < :cutoff{after}", **params)
        return int(conn.row_count), True, b.frontier
    upper = probe[0][0]
    conn.run(
        f"DELETE FROM ONLY {relation} WHERE {column} < :cutoff{after} AND {column} < :upper",
        upper=upper,
        **params,
    )
    if conn.row_count:
        return int(conn.row_count), False, upper
    # b.size rows or more share one timestamp: a range cannot split them, a LIMIT can.
    return _ctid_batch(conn, relation, column, b, ordered, keyset)


@dataclass(frozen=True)
class Survey:
    """What a dry run reports for one table."""

    expired_rows: int
    oldest: datetime | None
    partitions: list[str]


def survey(conn: pg8000.native.Connection, target: Target, cutoff: datetime) -> Survey:
    rel = target.relation.sql if target.partitioned else f"ONLY {target.relation.sql}"
    col = target.column_sql
    count, oldest = conn.run(
        f"SELECT (SELECT count(*) FROM {rel} WHERE {col} < :cutoff), "
        f"(SELECT min({col}) FROM {rel})",
        cutoff=cutoff,
    )[0]
    drops = plan_partitions(conn, target, cutoff).drops if target.partitioned else []
    return Survey(int(count), oldest, [d.partition.display for d in drops])


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
        cutoff: datetime,
        limits: Limits,
        keep_going: Callable[[], bool],
        recorder: StepRecorder | None = None,
        skipped: list[str] | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.cutoff = cutoff
        self.limits = limits
        self.keep_going = keep_going
        self.recorder = recorder or NoRecorder()
        # Partitions whose lock could not be had (an anti-wraparound autovacuum is not
        # cancelled for us): left for the next run rather than failing this one.
        self.skipped = skipped if skipped is not None else []

    def run(self) -> bool:
        if not self.keep_going():
            return False
        units: list[Callable[[bool], bool]] = []
        if self.target.partitioned:
            with self.db.transaction() as conn:
                plan = plan_partitions(conn, self.target, self.cutoff)
            units += [lambda last, d=d: self._drop(d, last) for d in plan.drops]
            units += [lambda last, r=r: self._prune_rows(r, last) for r in plan.row_by_row]
        else:
            units.append(lambda last: self._prune_rows(self.target.relation, last))
        # Each unit returns False when it stopped for the deadline; all() stops there too.
        finished = all(unit(index == len(units) - 1) for index, unit in enumerate(units))
        return finished and not self.skipped

    # -- units ------------------------------------------------------------------
    def _prune_rows(self, relation: Relation, last_unit: bool) -> bool:
        b = Batches(size=self.target.policy.batch_size)

        def batch(conn: pg8000.native.Connection) -> tuple[bool, bool, Any]:
            rows, unit_done, frontier = delete_batch(
                conn, relation.sql, self.target.column_sql, self.cutoff, b, self.target.indexed
            )
            final = self._book(conn, Step(rows=rows, batches=1), unit_done and last_unit)
            return unit_done, final, frontier

        def adapt(code: str | None) -> bool:
            if code in LOCK_CONFLICTS:
                b.skip_locked = True
                return True
            if code == QUERY_CANCELED and b.size > MIN_BATCH_SIZE:
                b.size = max(MIN_BATCH_SIZE, b.size // 2)
                return True
            return False

        while True:
            started = time.monotonic()
            outcome = self._transact(batch, adapt)
            if outcome is None:
                return False
            unit_done, final, b.frontier = outcome
            b.size = next_batch_size(
                b.size,
                (time.monotonic() - started) * 1000,
                self.limits.batch_target_ms,
                self.target.policy.batch_size,
            )
            if final:
                return unit_done and last_unit
            if unit_done:
                return True

    def _drop(self, drop: PartitionDrop, last_unit: bool) -> bool:
        part, parent = drop.partition.sql, drop.parent.sql

        def work(conn: pg8000.native.Connection) -> bool:
            self.recorder.fence(conn)  # no lock on the parent unless this run may still work
            # First keep autovacuum off the partition without blocking anyone: SHARE UPDATE
            # EXCLUSIVE lets reads and writes through, and waiting longer than
            # deadlock_timeout (1 s) for it gets a running autovacuum cancelled. Otherwise
            # DETACH would wait for autovacuum while already holding the parent.
            conn.run(
                f"SET LOCAL lock_timeout = {PARTITION_LOCK_TIMEOUT_MS}; "
                f"LOCK TABLE {part} IN SHARE UPDATE EXCLUSIVE MODE"
            )
            # The planner's row count, not count(*): scanning a partition only to drop it would
            # make a drop cost as much as reading the data. Exact after VACUUM/ANALYZE.
            ((estimate,),) = conn.run(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint "
                "FROM pg_partition_tree(:oid) t JOIN pg_class c ON c.oid = t.relid "
                "WHERE t.isleaf",
                oid=drop.partition.oid,
            )
            # ACCESS EXCLUSIVE on the parent queues every query behind it while it waits:
            # the short lock_timeout again for that.
            conn.run(
                f"SET LOCAL lock_timeout = {int(self.limits.lock_timeout_ms)}; "
                f"ALTER TABLE {parent} DETACH PARTITION {part}; DROP TABLE {part}"
            )
            step = Step(rows=0, partition=drop.partition.display, partition_rows=int(estimate))
            return self._book(conn, step, last_unit)

        try:
            outcome = self._transact(work, lambda code: code in LOCK_CONFLICTS)
        except DatabaseError as exc:
            if sqlstate(exc) not in LOCK_CONFLICTS:
                raise
            self.skipped.append(drop.partition.display)
            return True  # go on with the other partitions
        if outcome is None:
            return False
        return last_unit or not outcome

    # -- plumbing ---------------------------------------------------------------
    def _book(self, conn: pg8000.native.Connection, step: Step, last: bool) -> bool:
        """Record the step; returns whether it is this invocation's last for the table."""
        table_done = last and not self.skipped
        final = table_done or not self.keep_going()
        self.recorder.record(conn, replace(step, final=final, done=table_done))
        return final

    def _transact(
        self,
        work: Callable[[pg8000.native.Connection], T],
        adapt: Callable[[str | None], bool],
    ) -> T | None:
        """Run `work` in its own transaction, retrying transient conflicts; None if out of time."""
        attempt = 0
        while True:
            try:
                with self.db.transaction() as conn:
                    set_local_timeouts(
                        conn, self.limits.lock_timeout_ms, self.limits.statement_timeout_ms
                    )
                    return work(conn)
            except DatabaseError as exc:
                if attempt >= MAX_RETRIES or not adapt(sqlstate(exc)):
                    raise
            attempt += 1
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
            if not self.keep_going():
                return None
