"""Deleting what one policy says is expired, in transactions short enough for live traffic.

Every unit of work is its own transaction with `SET LOCAL lock_timeout` and
`statement_timeout`, and carries the run's bookkeeping (lease fence, progress,
and on the last unit the audit entry) through a StepRecorder, so that what was
deleted and what is recorded never disagree, whatever happens between two units.

Row-by-row: oldest first through the column's index, keyset-paginated so that no
batch rescans the index entries earlier batches left dead:

    DELETE FROM ONLY t WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM ONLY t WHERE col < :cutoff AND col >= :frontier
        ORDER BY col LIMIT :n))
      AND col < :cutoff          -- re-checked on the row actually deleted

No row locks are taken up front (FOR UPDATE would write every row twice and double
the WAL); if a batch meets a locked row (lock_timeout, deadlock), it is retried with
FOR UPDATE SKIP LOCKED and steps around it. A batch cancelled by statement_timeout
is retried at half the size. Without an index on the column, batches are unordered
(a sequential scan that stops at the limit beats a full sort per batch).

Partitions wholly older than the cutoff are detached and dropped in one
transaction (so a crash leaves either the partition or nothing, never a detached
orphan); the boundary partition is pruned row by row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
# Waiting this long for the old partition itself stalls no live query (none writes there),
# and outlasts deadlock_timeout (1 s), after which an autovacuum in the way is cancelled.
PARTITION_LOCK_TIMEOUT_MS = 2_000

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    lock_timeout_ms: int
    statement_timeout_ms: int


@dataclass(frozen=True)
class Step:
    """One committed unit of work on a table."""

    rows: int
    batches: int = 0
    partition: str | None = None
    final: bool = False  # the last unit of this table in this invocation: carries the audit
    done: bool = False  # nothing older than the cutoff is left in the table


class StepRecorder(Protocol):
    def fence(self, conn: pg8000.native.Connection) -> None:
        """Raise unless this run may still work (first statement after the timeouts)."""

    def record(self, conn: pg8000.native.Connection, step: Step) -> None:
        """Book the step in the same transaction as the work."""


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
    """Transaction-scoped (SET LOCAL), so nothing leaks to the pooled connection."""
    conn.run(
        "SELECT set_config('lock_timeout', :lock, true), "
        "set_config('statement_timeout', :stmt, true)",
        lock=str(lock_timeout_ms),
        stmt=str(statement_timeout_ms),
    )


def delete_sql(
    relation: str, column: str, *, ordered: bool, after_frontier: bool, skip_locked: bool
) -> str:
    frontier = f" AND {column} >= :frontier" if after_frontier else ""
    order = f" ORDER BY {column}" if ordered else ""
    lock = " FOR UPDATE SKIP LOCKED" if skip_locked else ""
    return (
        f"WITH gone AS (DELETE FROM ONLY {relation} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM ONLY {relation} WHERE {column} < :cutoff{frontier}{order} "
        f"LIMIT :n{lock})) AND {column} < :cutoff RETURNING {column}) "
        f"SELECT count(*), max({column}) FROM gone"
    )


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
    ) -> None:
        self.db = db
        self.target = target
        self.cutoff = cutoff
        self.limits = limits
        self.keep_going = keep_going
        self.recorder = recorder or NoRecorder()

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
        return all(unit(index == len(units) - 1) for index, unit in enumerate(units))

    # -- units ------------------------------------------------------------------
    def _prune_rows(self, relation: Relation, last_unit: bool) -> bool:
        state: dict[str, Any] = {
            "size": self.target.policy.batch_size,
            "skip_locked": False,
            "frontier": None,
        }

        def batch(conn: pg8000.native.Connection) -> tuple[bool, bool, Any]:
            sql = delete_sql(
                relation.sql,
                self.target.column_sql,
                ordered=self.target.indexed,
                after_frontier=state["frontier"] is not None,
                skip_locked=state["skip_locked"],
            )
            params: dict[str, Any] = {"cutoff": self.cutoff, "n": state["size"]}
            if state["frontier"] is not None:
                params["frontier"] = state["frontier"]
            rows, newest = conn.run(sql, **params)[0]
            unit_done = rows < state["size"]
            final = self._book(conn, Step(rows=int(rows), batches=1), unit_done and last_unit)
            return unit_done, final, newest

        def adapt(code: str | None) -> bool:
            if code in LOCK_CONFLICTS:
                state["skip_locked"] = True
                return True
            if code == QUERY_CANCELED and state["size"] > MIN_BATCH_SIZE:
                state["size"] = max(MIN_BATCH_SIZE, state["size"] // 2)
                return True
            return False

        while True:
            outcome = self._transact(batch, adapt)
            if outcome is None:
                return False
            unit_done, final, newest = outcome
            if final:
                return unit_done and last_unit
            if unit_done:
                return True
            if self.target.indexed and newest is not None:
                state["frontier"] = newest

    def _drop(self, drop: PartitionDrop, last_unit: bool) -> bool:
        part, parent = drop.partition.sql, drop.parent.sql

        def work(conn: pg8000.native.Connection) -> bool:
            # SHARE blocks writes into the partition only (readers of the parent go on), so the
            # count is exactly what gets dropped.
            lock_wait_ms = max(self.limits.lock_timeout_ms, PARTITION_LOCK_TIMEOUT_MS)
            set_local_timeouts(conn, lock_wait_ms, self.limits.statement_timeout_ms)
            conn.run(f"LOCK TABLE {part} IN SHARE MODE")
            rows = conn.run(f"SELECT count(*) FROM {part}")[0][0]
            # ACCESS EXCLUSIVE on the parent queues every query behind it while it waits:
            # back to the short lock_timeout for that.
            set_local_timeouts(conn, self.limits.lock_timeout_ms, self.limits.statement_timeout_ms)
            conn.run(f"ALTER TABLE {parent} DETACH PARTITION {part}")
            conn.run(f"DROP TABLE {part}")
            step = Step(rows=int(rows), partition=drop.partition.display)
            return self._book(conn, step, last_unit)

        outcome = self._transact(work, lambda code: code in LOCK_CONFLICTS)
        if outcome is None:
            return False
        return last_unit or not outcome

    # -- plumbing ---------------------------------------------------------------
    def _book(self, conn: pg8000.native.Connection, step: Step, table_done: bool) -> bool:
        """Record the step; returns whether it is this invocation's last for the table."""
        final = table_done or not self.keep_going()
        self.recorder.record(
            conn,
            Step(step.rows, step.batches, step.partition, final=final, done=table_done),
        )
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
                    self.recorder.fence(conn)
                    return work(conn)
            except DatabaseError as exc:
                if attempt >= MAX_RETRIES or not adapt(sqlstate(exc)):
                    raise
            attempt += 1
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
            if not self.keep_going():
                return None
