"""Pruning one table: drop wholly old partitions, then delete the rest in keyset batches.

Each unit of work (a partition drop, a batch) is its own transaction with SET LOCAL
timeouts, booked through a StepRecorder (the lease renewal as a fence, progress, on the
last unit the audit entry) in that transaction: what was deleted and what is recorded
never disagree. The cutoff is cast to the column's type in every statement (an untyped
parameter takes the column's type, and a `timestamp` one drops the instant's offset); a
row at the cutoff is kept.

Batches go oldest first from the frontier, so none rescans the index entries earlier ones
left dead: probe for the (n+1)-th oldest expired row, delete the n below it. The ctid form
serves what a range cannot: n rows or more with one timestamp, a column without an index,
and stepping around locked rows (SKIP LOCKED once a batch met one; no row locks up front:
they would write every row twice). A batch cancelled by its statement_timeout is redone at
half the size, down to MIN_BATCH_SIZE. Batches start at START_BATCH_SIZE rows and steer
toward batch_target_ms each, up to batchSize.

A partition of a parent range-partitioned by the policy column alone is dropped when its
upper bound is at or below the cutoff, skipped when its lower bound is at or above it,
else pruned row by row; the server compares the bounds with the cutoff in the column's
type, so `-infinity`, BC or far-future bounds compare like any other. Detach and drop are
one transaction (a crash leaves the partition or nothing; DETACH CONCURRENTLY cannot run in
one); the partition's own locks come first, so waiting for its readers queues nobody on the
parent, and DETACH waits at most lock_timeout for the parent. A lock not had leaves the
partition (on the parent: that parent's other partitions too) for the next run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError

import retention.model as m
from ops.db import Database
from ops.log import logger
from ops.sql import set_local_timeouts, sqlstate
from ops.timestamps import PgTimestamp
from ops.tracing import span

LOCK_CONFLICTS = ("55P03", "40P01")  # lock_not_available, deadlock_detected
QUERY_CANCELED = "57014"  # statement_timeout
MAX_LOCK_RETRIES, RETRY_BACKOFF_S = 3, 0.1  # a batch's lock conflicts, retried with backoff
MIN_BATCH_SIZE = 100  # the floor of halving a cancelled batch (or the policy's batchSize)
# Waiting this long for an old partition's SHARE UPDATE EXCLUSIVE lock stalls no query
# and outlasts deadlock_timeout (1 s), after which an autovacuum in the way is cancelled.
PARTITION_LOCK_TIMEOUT_MS = 2_000
# A relation's first batch takes at most this many rows; batches double from there while
# they take under half their time target (cold pages make the first ones the slowest).
START_BATCH_SIZE = 1_000


def transaction(
    db: Database, limits: m.Limits, statement_timeout_ms: int | None = None
) -> AbstractContextManager[pg8000.native.Connection]:
    return db.transaction(
        statement_timeout_ms=statement_timeout_ms or limits.statement_timeout_ms,
        lock_timeout_ms=limits.lock_timeout_ms,
    )


def next_batch_size(size: int, elapsed_ms: float, target_ms: float, maximum: int) -> int:
    """Shrink in proportion when a batch ran over `target_ms`, double under half of it."""
    if elapsed_ms > target_ms:
        return max(min(MIN_BATCH_SIZE, maximum), int(size * target_ms / elapsed_ms))
    if elapsed_ms < target_ms / 2:
        return min(maximum, size * 2)
    return size


def column_cutoff(run: Callable[..., Any], target: m.Target, cutoff: PgTimestamp) -> PgTimestamp:
    """The run's cutoff (an instant) in the column's type, once per table and invocation:
    for `timestamp`, its wall-clock time in the run's session's TimeZone."""
    if target.sql_type == "timestamptz":
        return cutoff
    # The cast uses the session's zone itself (`AT TIME ZONE current_setting(...)` would
    # parse its name again, and not every value of the setting parses there).
    rows = run("SELECT CAST(CAST(:c AS timestamptz) AS timestamp)", c=cutoff)
    wall_clock: PgTimestamp = rows[0][0]
    return wall_clock
    return wall_clock


# A range partition's bounds on one column: each MINVALUE, MAXVALUE or a quoted literal.
_BOUND = r"\s*(?:MINVALUE|MAXVALUE|'((?:[^']|'')*)')\s*"
_RANGE_RE = re.compile(rf"FOR VALUES FROM \({_BOUND}\) TO \({_BOUND}\)")

_CHILDREN = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind = 'p', pg_get_expr(c.relpartbound, c.oid)
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.inhparent = :parent
"""
# Whether the parent is range-partitioned on exactly the policy column.
_KEYED_BY = """
SELECT pt.partstrat = 'r' AND pt.partnatts = 1
       AND (SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]) = :column
  FROM pg_partitioned_table pt WHERE pt.partrelid = :parent
"""


# Each bound literal: how it compares with the cutoff (-1, 0, 1), and its epoch (an order).
_VERSUS_CUTOFF = """
SELECT t, CASE WHEN v < c THEN -1 WHEN v > c THEN 1 ELSE 0 END, extract(epoch FROM v)
  FROM (SELECT t, CAST(t AS {type}) AS v, CAST(:cutoff AS {type}) AS c
          FROM unnest(CAST(:texts AS text[])) AS t) AS b
"""


def _bound_literals(bound: str | None) -> tuple[str | None, ...] | None:
    """A range partition's (lower, upper) literals, None for MINVALUE/MAXVALUE; None for
    DEFAULT, LIST/HASH and bounds of more than one column."""
    match = _RANGE_RE.fullmatch(bound or "")
    return tuple(t and t.replace("''", "'") for t in match.groups()) if match else None


def _plan_into(
    conn: pg8000.native.Connection,
    parent: m.Relation,
    target: m.Target,
    cutoff: PgTimestamp,
    plan: tuple[list[m.PartitionDrop], list[m.Relation]],
) -> None:
    keyed = conn.run(_KEYED_BY, parent=parent.oid, column=target.policy.column)
    children = conn.run(_CHILDREN, parent=parent.oid)
    by_column = bool(keyed and keyed[0][0])
    literals = [_bound_literals(c[4]) if by_column else None for c in children]
    texts = [t for pair in literals if pair for t in pair if t is not None]
    # The server printed the bounds in the session's DateStyle/TimeZone and reads them back
    # alike, compared with the cutoff as (-1, 0, 1) and with their epoch (an order).
    query = _VERSUS_CUTOFF.format(type=target.sql_type)
    compared = conn.run(query, texts=texts, cutoff=cutoff) if texts else []
    versus = {t: (int(side), Decimal(epoch)) for t, side, epoch in compared}
    for (oid, schema, name, partitioned, _), pair in zip(children, literals, strict=True):
        child = m.Relation(int(oid), schema, name)
        if pair is not None:
            lower, upper = (versus.get(t) if t else None for t in pair)
            if upper is not None and upper[0] <= 0:  # every row it can hold is older
                plan[0].append(m.PartitionDrop(parent, child, upper[1]))
                continue
            if lower is not None and lower[0] >= 0:  # no row it can hold is older
                continue
        if partitioned:
            _plan_into(conn, child, target, cutoff, plan)
        else:
            plan[1].append(child)


def plan_partitions(
    conn: pg8000.native.Connection, target: m.Target, cutoff: PgTimestamp
) -> tuple[list[m.PartitionDrop], list[m.Relation]]:
    """The partitions to drop (oldest first), those to prune row by row."""
    plan: tuple[list[m.PartitionDrop], list[m.Relation]] = ([], [])
    _plan_into(conn, target.relation, target, cutoff, plan)
    return sorted(plan[0], key=lambda d: d.upper), plan[1]


def delete_batch(
    conn: pg8000.native.Connection,
    target: m.Target,
    relation: str,
    cutoff: PgTimestamp,
    cursor: m.KeysetCursor,
) -> m.BatchResult:
    """Delete at most `cursor.size` of the oldest expired rows (any, if not indexed);
    `cutoff` is in the column's type."""
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
    """What a run would delete, counted by the batches' own filter."""
    rel = target.relation.sql if target.partitioned else f"ONLY {target.relation.sql}"
    col = target.column_sql
    cutoff = column_cutoff(conn.run, target, cutoff)
    count, oldest = conn.run(
        f"SELECT (SELECT count(*) FROM {rel} WHERE {col} < CAST(:cutoff AS {target.sql_type})), "
        f"(SELECT min({col}) FROM {rel})",
        cutoff=cutoff,
    )[0]
    drops = plan_partitions(conn, target, cutoff)[0] if target.partitioned else []
    return m.Survey(int(count), oldest, [d.partition.display for d in drops])


@dataclass(eq=False)
class TablePruner:
    """Prunes one table down to `cutoff` (an instant) until done or `keep_going()` says
    stop; `run()` is True when nothing older is left. When no unit commits (nothing to
    do, no time), no step is `final`: the caller audits."""

    db: Database
    target: m.Target
    cutoff: PgTimestamp  # in the column's type once `run` starts
    limits: m.Limits
    keep_going: Callable[[], bool]
    recorder: m.StepRecorder
    skips: m.Skips = field(default_factory=m.Skips)
    _locked_parents: set[int] = field(default_factory=set)

    def run(self) -> bool:
        if not self.keep_going():
            return False
        self.cutoff = column_cutoff(self.db.run, self.target, self.cutoff)
        units: list[m.PartitionDrop | m.Relation] = [self.target.relation]
        if self.target.partitioned:  # whole partitions first, then the rest row by row
            with self.db.transaction(statement_timeout_ms=self.limits.statement_timeout_ms) as conn:
                drops, row_by_row = plan_partitions(conn, self.target, self.cutoff)
            units = [*drops, *row_by_row]
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
        """Batches until the relation is done (True), out of time (False) or locked (True:
        left for the next run). A lock conflict is retried stepping around locked rows, a
        cancelled batch at half the size."""
        size = self.target.policy.batch_size
        cursor = m.KeysetCursor(size=min(size, START_BATCH_SIZE), floor=min(MIN_BATCH_SIZE, size))
        conflicts, started = 0, time.monotonic()
        while True:
            # keyset: ordered on the column's index; ctid: unordered or stepping around locks
            mode = "keyset" if self.target.indexed and not cursor.skip_locked else "ctid"
            try:
                with (
                    span("retention batch", table=self.target.table, mode=mode) as traced,
                    transaction(self.db, self.limits) as conn,
                ):
                    batch = delete_batch(conn, self.target, relation.sql, self.cutoff, cursor)
                    traced.set(rows=batch.rows)
                    step = m.Step(rows=batch.rows, batches=1)
                    final = self._book(conn, step, batch.done and last_unit)
            except DatabaseError as exc:
                code = sqlstate(exc)
                if code in LOCK_CONFLICTS and conflicts < MAX_LOCK_RETRIES:
                    cursor.skip_locked = True
                    conflicts += 1
                    time.sleep(RETRY_BACKOFF_S * 2**conflicts)
                elif code in LOCK_CONFLICTS:  # locked even stepping around: DDL, LOCK TABLE
                    self._skip(self.skips.relations, relation.display, "table")
                    return True  # go on with the other units
                elif code == QUERY_CANCELED and cursor.size > cursor.floor:
                    cursor.size = max(cursor.floor, cursor.size // 2)
                else:
                    raise
                if not self.keep_going():
                    return False
                continue
            if final:
                return batch.done and last_unit
            if batch.done:
                return True
            cursor.frontier = batch.frontier
            elapsed_ms = (time.monotonic() - started) * 1000
            target_ms = self.limits.batch_target_ms
            cursor.size = next_batch_size(cursor.size, elapsed_ms, target_ms, size)
            conflicts, started = 0, time.monotonic()

    def _drop(self, drop: m.PartitionDrop, last_unit: bool) -> bool:
        part, parent = drop.partition.sql, drop.parent.sql
        if drop.parent.oid in self._locked_parents:  # would queue writers again: next run
            self.skips.partitions.append(drop.partition.display)
            return True
        waiting_for = "partition"
        try:
            with (
                span("retention partition drop", table=self.target.table),
                transaction(self.db, self.limits) as conn,
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
            if waiting_for == "parent":
                self._locked_parents.add(drop.parent.oid)
            self._skip(self.skips.partitions, drop.partition.display, waiting_for)
            return True  # go on with the other partitions
        return last_unit or not final

    def _skip(self, skipped: list[str], relation: str, lock: str) -> None:
        skipped.append(relation)
        fields = {"warning": "locked", "table": self.target.table, "relation": relation}
        message = f"{relation} is locked by another session; left for the next run"
        logger.warning(message, extra={"type": "retention_warning", **fields, "lock": lock})

    def _lock_partition(self, conn: pg8000.native.Connection, drop: m.PartitionDrop) -> int:
        """Lock the partition, queuing nobody on the parent; returns its estimated rows. First
        SHARE UPDATE EXCLUSIVE (reads and writes pass; waiting past deadlock_timeout gets a
        running autovacuum cancelled), then ACCESS EXCLUSIVE on the partition alone."""
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
        done = last and not self.skips
        final = done or not self.keep_going()  # paused: out of time, or locks left rows
        self.recorder.record(conn, replace(step, final=final, done=done))
        return final
