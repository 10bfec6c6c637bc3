"""Pruning one table against a known cutoff: exact boundaries, batches, locks, partitions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pg8000.native
import pytest

from ops.db import Database, connect_url
from ops.retention_policies import Policy
from ops.sql import sqlstate
from ops.timestamps import PgTimestamp
from retention import inputs as catalog
from retention import pruning
from retention.model import BatchResult, KeysetCursor, Limits, Step, StepRecorder, Target
from tests.support.db import SQL
from tests.support.retention import count

pytestmark = pytest.mark.usefixtures("retention_slate")

LIMITS = Limits(lock_timeout_ms=200, statement_timeout_ms=2000)

INSERTS = {
    "inbound_events": (
        "received_at",
        "event_type",
        "INSERT INTO inbound_events (source, event_type, received_at) VALUES ('t', :label, :ts)",
    ),
    "chat_sessions": (
        "updated_at",
        "user_ref",
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) VALUES ('t', :label, :ts)",
    ),
}


class Steps:
    """A StepRecorder that keeps what it is told."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def fence(self, conn: pg8000.native.Connection) -> None:
        pass

    def record(self, conn: pg8000.native.Connection, step: Step) -> None:
        self.steps.append(step)


def _target(table: str, column: str, batch_size: int) -> tuple[Database, Target]:
    db = Database()
    (target,) = catalog.resolve_targets(db, [Policy(table, column, 30, batch_size)])
    return db, target


def _prune(
    table: str,
    column: str,
    cutoff: datetime,
    batch_size: int = 2,
    recorder: StepRecorder | None = None,
) -> bool:
    db, target = _target(table, column, batch_size)
    try:
        return pruning.TablePruner(
            db, target, cutoff, LIMITS, lambda: True, recorder or Steps()
        ).run()
    finally:
        db.close()


def _labels(sql: SQL, table: str) -> set[str]:
    _, label, _ = INSERTS[table]
    return {r[0] for r in sql(f"SELECT {label} FROM {table}")}


@pytest.mark.parametrize("table", list(INSERTS))
def test_boundary_is_exact_to_the_microsecond(sql: SQL, table: str) -> None:
    column, _, insert = INSERTS[table]
    cutoff = sql("SELECT date_trunc('second', now()) - interval '30 days'")[0][0]
    offsets = {
        "a day past": -86_400,
        "1 s past": -1,
        "1 us past": -0.000_001,
        "at the cutoff": 0,
        "1 s inside": 1,
        "recent": 29 * 86_400,
    }
    for label, seconds in offsets.items():
        sql(insert, label=label, ts=cutoff + timedelta(seconds=seconds))
    steps = Steps()

    assert _prune(table, column, cutoff, batch_size=2, recorder=steps) is True

    assert _labels(sql, table) == {"at the cutoff", "1 s inside", "recent"}
    assert sum(s.rows for s in steps.steps) == 3
    assert [s.final for s in steps.steps] == [False] * (len(steps.steps) - 1) + [True]
    assert steps.steps[-1].done


def test_batches_walk_ties_across_batch_boundaries(sql: SQL) -> None:
    cutoff = sql("SELECT now() - interval '30 days'")[0][0]
    same = cutoff - timedelta(days=3)
    for i in range(11):  # 11 rows with one timestamp: batches of 4 split them 4/4/3
        sql(INSERTS["inbound_events"][2], label=f"tie {i}", ts=same)
    for i in range(6):
        sql(INSERTS["inbound_events"][2], label=f"spread {i}", ts=cutoff - timedelta(hours=i + 1))
    sql(INSERTS["inbound_events"][2], label="kept", ts=cutoff + timedelta(hours=1))
    steps = Steps()

    assert _prune("inbound_events", "received_at", cutoff, batch_size=4, recorder=steps)

    assert _labels(sql, "inbound_events") == {"kept"}
    sizes = [s.rows for s in steps.steps]
    # The tie group is split by LIMIT (a range cannot split it), then ranges take over.
    assert sizes[:2] == [4, 4] and all(0 < n <= 4 for n in sizes) and sum(sizes) == 17


def test_table_without_index_is_pruned_unordered(sql: SQL) -> None:
    sql("DROP TABLE IF EXISTS retention_unindexed")
    sql("CREATE TABLE retention_unindexed (id int PRIMARY KEY, at timestamp NOT NULL)")
    sql(
        "INSERT INTO retention_unindexed SELECT g, now()::timestamp - make_interval(days => g) "
        "FROM generate_series(1, 60) g"
    )
    try:
        db, target = _target("retention_unindexed", "at", 7)
        assert not target.indexed and target.column_type == "timestamp without time zone"
        cutoff = sql("SELECT now() - interval '30 days' - interval '12 hours'")[0][0]
        assert pruning.TablePruner(db, target, cutoff, LIMITS, lambda: True, Steps()).run()
        db.close()
        assert sql("SELECT min(id), max(id) FROM retention_unindexed")[0] == [1, 30]
    finally:
        sql("DROP TABLE retention_unindexed")


def test_row_being_updated_inside_the_cutoff_is_stepped_around_and_kept(
    sql: SQL, database_url: str
) -> None:
    cutoff = sql("SELECT now() - interval '90 days'")[0][0]
    insert = INSERTS["chat_sessions"][2]
    for i in range(5):
        sql(insert, label=f"old {i}", ts=cutoff - timedelta(days=1, minutes=i))
    # Another session is touching "old 2" right now: its update moves it inside the cutoff.
    other = connect_url(database_url, timeout_s=10)
    try:
        other.run("BEGIN")
        other.run("UPDATE chat_sessions SET updated_at = now() WHERE user_ref = 'old 2'")
        done = threading.Event()
        result: list[bool] = []

        def prune() -> None:
            result.append(_prune("chat_sessions", "updated_at", cutoff, batch_size=10))
            done.set()

        worker = threading.Thread(target=prune)
        worker.start()
        # lock_timeout (200 ms) turns the wait into a retry with SKIP LOCKED: no dependence
        # on the other transaction ending.
        assert done.wait(30), "pruning waited on the locked row instead of stepping around it"
        worker.join()
        other.run("COMMIT")
    finally:
        other.close()
    assert result == [True]
    assert _labels(sql, "chat_sessions") == {"old 2"}


@pytest.fixture
def partitioned(sql: SQL) -> Iterator[datetime]:
    """Days D-5..D+2 around today's midnight, with a sub-partitioned middle and a default."""
    sql("DROP TABLE IF EXISTS retention_part")
    d: datetime = sql("SELECT date_trunc('day', now())")[0][0]
    day = timedelta(days=1)
    sql(
        "CREATE TABLE retention_part (id bigint GENERATED ALWAYS AS IDENTITY, "
        "at timestamptz NOT NULL, label text NOT NULL, PRIMARY KEY (id, at)) "
        "PARTITION BY RANGE (at)"
    )
    sql("CREATE INDEX ON retention_part (at)")

    def part(name: str, lo: datetime, hi: datetime, extra: str = "") -> None:
        sql(
            f"CREATE TABLE {name} PARTITION OF retention_part "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}') {extra}"
        )

    part("retention_part_old", d - 5 * day, d - 4 * day)
    part("retention_part_tree", d - 4 * day, d, "PARTITION BY RANGE (at)")
    sql(
        f"CREATE TABLE retention_part_tree_a PARTITION OF retention_part_tree "
        f"FOR VALUES FROM ('{(d - 4 * day).isoformat()}') TO ('{(d - 3 * day).isoformat()}')"
    )
    sql(
        f"CREATE TABLE retention_part_tree_b PARTITION OF retention_part_tree "
        f"FOR VALUES FROM ('{(d - 3 * day).isoformat()}') TO ('{d.isoformat()}')"
    )
    part("retention_part_new", d, d + 2 * day, "PARTITION BY HASH (id)")
    for r in range(2):
        sql(
            f"CREATE TABLE retention_part_new_{r} PARTITION OF retention_part_new "
            f"FOR VALUES WITH (MODULUS 2, REMAINDER {r})"
        )
    sql("CREATE TABLE retention_part_default PARTITION OF retention_part DEFAULT")
    yield d
    sql("DROP TABLE IF EXISTS retention_part")


def test_partitions_wholly_older_are_dropped_and_only_the_boundary_pruned(
    sql: SQL, partitioned: datetime
) -> None:
    d, day = partitioned, timedelta(days=1)
    cutoff = d - 2 * day + timedelta(hours=12)
    rows = {
        "old": d - 5 * day + timedelta(hours=1),
        "tree_a": d - 4 * day + timedelta(hours=1),
        "tree_b early": d - 3 * day + timedelta(hours=1),
        "boundary past": cutoff - timedelta(seconds=1),
        "boundary inside": cutoff + timedelta(seconds=1),
        "new": d + timedelta(hours=1),
        "ancient (default)": d - 400 * day,
        "future (default)": d + 400 * day,
    }
    for label, at in rows.items():
        sql("INSERT INTO retention_part (at, label) VALUES (:at, :label)", at=at, label=label)
    sql("ANALYZE retention_part")  # the dropped partitions' row counts come from statistics
    steps = Steps()

    assert _prune("retention_part", "at", cutoff, batch_size=1, recorder=steps)

    remaining = {r[0] for r in sql("SELECT label FROM retention_part")}
    assert remaining == {"boundary inside", "new", "future (default)"}
    dropped = [s.partition for s in steps.steps if s.partition]
    assert dropped == ["public.retention_part_old", "public.retention_part_tree_a"]
    # Row by row: tree_b's two expired rows (it holds the cutoff) and DEFAULT's ancient one;
    # dropped whole: old and tree_a, one row each by the statistics.
    assert sum(s.rows for s in steps.steps) == 3
    assert [s.partition_rows for s in steps.steps if s.partition] == [1, 1]
    partitions = {r[0] for r in sql("SELECT relid::text FROM pg_partition_tree('retention_part')")}
    assert "retention_part_old" not in partitions and "retention_part_tree_a" not in partitions
    assert {"retention_part_tree_b", "retention_part_new_0", "retention_part_default"} <= partitions
    # Detached and dropped in one transaction: no orphaned table is left behind.
    assert count(sql, "pg_class", "relname IN ('retention_part_old', 'retention_part_tree_a')") == 0
    assert steps.steps[-1].final and steps.steps[-1].done


def test_survey_counts_without_deleting(sql: SQL, partitioned: datetime) -> None:
    d, day = partitioned, timedelta(days=1)
    for offset in (-5, -4, -3, 1):
        sql("INSERT INTO retention_part (at, label) VALUES (:at, 'x')", at=d + offset * day)
    db, target = _target("retention_part", "at", 10)
    with db.transaction() as conn:
        found = pruning.survey(conn, target, d - 2 * day)
    db.close()
    assert found.expired_rows == 3
    assert found.oldest == d - 5 * day
    assert found.partitions == ["public.retention_part_old", "public.retention_part_tree_a"]
    assert count(sql, "retention_part") == 4


def test_partition_that_cannot_be_locked_is_left_for_the_next_run(
    sql: SQL, partitioned: datetime, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, day = partitioned, timedelta(days=1)
    cutoff = d - 2 * day + timedelta(hours=12)
    for at in (d - 5 * day, d - 4 * day, cutoff - timedelta(hours=1)):
        sql("INSERT INTO retention_part (at, label) VALUES (:at, 'x')", at=at)
    monkeypatch.setattr(pruning, "PARTITION_LOCK_TIMEOUT_MS", 100)
    # An anti-wraparound autovacuum holds this lock for hours and is never cancelled for us.
    vacuum = connect_url(database_url, timeout_s=10)
    try:
        vacuum.run("BEGIN")
        vacuum.run("LOCK TABLE retention_part_old IN SHARE UPDATE EXCLUSIVE MODE")
        steps = Steps()
        db, target = _target("retention_part", "at", 10)
        pruner = pruning.TablePruner(db, target, cutoff, LIMITS, lambda: True, steps)

        assert pruner.run() is False

        assert pruner.skips.partitions == ["public.retention_part_old"]
        assert [s.partition for s in steps.steps if s.partition] == ["public.retention_part_tree_a"]
        assert not any(s.done for s in steps.steps)
        vacuum.run("COMMIT")
        assert pruning.TablePruner(db, target, cutoff, LIMITS, lambda: True, Steps()).run() is True
        db.close()
    finally:
        vacuum.close()
    assert count(sql, "retention_part") == 0
    assert count(sql, "pg_class", "relname = 'retention_part_old'") == 0


def test_batches_never_exceed_the_batch_size_through_bursts_and_gaps(sql: SQL) -> None:
    cutoff = sql("SELECT date_trunc('second', now()) - interval '30 days'")[0][0]
    old = cutoff - timedelta(days=10)
    rows = [
        # steady: one a minute; then a burst: 2,500 rows in 10 s; a 3-day gap; steady again
        *(old + timedelta(minutes=i) for i in range(3000)),
        *(old + timedelta(days=3, microseconds=4000 * i) for i in range(2500)),
        *(old + timedelta(days=6, minutes=i) for i in range(1500)),
    ]
    sql(
        "INSERT INTO inbound_events (source, event_type, received_at) "
        "SELECT 't', 'expired', unnest(CAST(:ts AS timestamptz[]))",
        ts=rows,
    )
    for label, offset in (("at the cutoff", 0), ("1 s inside", 1)):
        sql(INSERTS["inbound_events"][2], label=label, ts=cutoff + timedelta(seconds=offset))
    sql(INSERTS["inbound_events"][2], label="1 us past", ts=cutoff - timedelta(microseconds=1))
    steps = Steps()

    assert _prune("inbound_events", "received_at", cutoff, batch_size=1000, recorder=steps)

    assert _labels(sql, "inbound_events") == {"at the cutoff", "1 s inside"}
    sizes = [s.rows for s in steps.steps]
    assert sum(sizes) == len(rows) + 1 and max(sizes) <= 1000


def test_batches_on_a_timestamp_without_time_zone_column(sql: SQL) -> None:
    sql("DROP TABLE IF EXISTS retention_naive")
    sql("CREATE TABLE retention_naive (id int PRIMARY KEY, at timestamp NOT NULL)")
    sql("CREATE INDEX ON retention_naive (at)")
    sql(
        "INSERT INTO retention_naive SELECT g, localtimestamp - make_interval(mins => g * 20) "
        "FROM generate_series(1, 6000) g"
    )
    try:
        db, target = _target("retention_naive", "at", 1000)
        assert target.column_type == "timestamp without time zone"
        cutoff = sql("SELECT now() - interval '30 days'")[0][0]
        steps = Steps()
        assert pruning.TablePruner(db, target, cutoff, LIMITS, lambda: True, steps).run()
        db.close()
        kept = sql(
            "SELECT count(*), min(at) >= localtimestamp - interval '30 days' FROM retention_naive"
        )
        assert kept == [[sum(1 for g in range(1, 6001) if g * 20 < 30 * 24 * 60), True]]
        assert sum(s.rows for s in steps.steps) == 6000 - kept[0][0]
        assert max(s.rows for s in steps.steps) <= 1000 and len(steps.steps) > 1
    finally:
        sql("DROP TABLE retention_naive")


def test_a_batch_cancelled_by_its_statement_timeout_is_redone_at_half_the_size(
    sql: SQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slow row (slow once: a sequence is not rolled back) makes its batch overrun the
    statement timeout; the batch is rolled back and redone at half the size, and every row
    is counted once."""
    sql("DROP TABLE IF EXISTS retention_guard")
    sql("DROP SEQUENCE IF EXISTS retention_guard_once")
    sql("CREATE SEQUENCE retention_guard_once")
    sql("CREATE TABLE retention_guard (id int PRIMARY KEY, at timestamptz NOT NULL)")
    sql("CREATE INDEX ON retention_guard (at)")
    sql(
        "CREATE FUNCTION retention_guard_slow() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF OLD.id = 2500 AND nextval('retention_guard_once') = 1 THEN "
        "PERFORM pg_sleep(1.5); END IF; RETURN OLD; END $$"
    )
    sql(
        "CREATE TRIGGER retention_guard_slow BEFORE DELETE ON retention_guard "
        "FOR EACH ROW EXECUTE FUNCTION retention_guard_slow()"
    )
    sql(
        "INSERT INTO retention_guard SELECT g, "
        "now() - interval '40 days' + make_interval(mins => g) FROM generate_series(1, 4000) g"
    )
    tried: list[tuple[str, int]] = []
    real = pruning.delete_batch

    def spy(
        conn: pg8000.native.Connection,
        target: Target,
        relation: str,
        cutoff: PgTimestamp,
        cursor: KeysetCursor,
    ) -> BatchResult:
        size = cursor.size
        try:
            return real(conn, target, relation, cutoff, cursor)
        except Exception as exc:
            tried.append((sqlstate(exc), size))
            raise

    monkeypatch.setattr(pruning, "delete_batch", spy)
    limits = Limits(lock_timeout_ms=200, statement_timeout_ms=1000)
    try:
        db, target = _target("retention_guard", "at", 1000)
        cutoff = sql("SELECT now() - interval '30 days'")[0][0]
        steps = Steps()
        assert pruning.TablePruner(db, target, cutoff, limits, lambda: True, steps).run()
        db.close()
        assert count(sql, "retention_guard") == 0
        assert sum(s.rows for s in steps.steps) == 4000
        assert [code for code, _ in tried] == [pruning.QUERY_CANCELED]
        cancelled_size = tried[0][1]
        assert any(s.rows == cancelled_size // 2 for s in steps.steps)
    finally:
        sql("DROP TABLE retention_guard")
        sql("DROP FUNCTION retention_guard_slow()")
        sql("DROP SEQUENCE retention_guard_once")
