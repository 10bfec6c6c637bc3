"""Retention next to sessions that hold locks: it gives up after lock_timeout, never fails
the run, never keeps writers waiting longer than that, and the next run finishes the job."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

from ops.db import connect_url
from tests.support.db import SQL
from tests.support.retention import (
    FAST_SETTINGS,
    audit_entries,
    count,
    lines,
    policies,
    run,
    seed,
)

pytestmark = pytest.mark.usefixtures("retention_slate")

LOCK_TIMEOUT_S = int(FAST_SETTINGS["RETENTION_LOCK_TIMEOUT_MS"]) / 1000
MARGIN_S = 1.0  # scheduling noise on a shared machine, on top of the lock_timeout budget


@contextmanager
def holding(database_url: str, *statements: str) -> Iterator[Callable[[], None]]:
    """Another session that runs `statements` in a transaction it keeps open (a long
    report, a migration); yields a function that ends it."""
    other = connect_url(database_url, timeout_s=30)
    other.run("BEGIN")
    for statement in statements:
        other.run(statement)
    try:
        yield lambda: other.run("COMMIT")
    finally:
        other.close()


@contextmanager
def writer(database_url: str, table: str) -> Iterator[list[float]]:
    """Single-row INSERTs into `table` (the parent) back to back, each timed, while the
    block runs; yields the latencies in seconds."""
    conn = connect_url(database_url, timeout_s=30)
    latencies: list[float] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            started = time.monotonic()
            conn.run(f"INSERT INTO {table} (received_at) VALUES (now())")
            latencies.append(time.monotonic() - started)
            time.sleep(0.005)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.1)
        yield latencies
    finally:
        stop.set()
        thread.join(30)
        conn.close()
    assert latencies, "the writer wrote nothing"


def _fill_days(sql: SQL, daily_partitions: datetime) -> datetime:
    sql(
        "INSERT INTO retention_daily (received_at) "
        "SELECT now() - make_interval(hours => g) FROM generate_series(1, 35 * 24, 7) g"
    )
    sql("ANALYZE retention_daily")
    return daily_partitions


def _expired_partitions(sql: SQL, cutoff: datetime, d: datetime) -> list[str]:
    return [
        f"public.retention_daily_{n + 35:02d}"
        for n in range(-35, 2)
        if d + timedelta(days=n + 1) <= cutoff
    ]


def _existing(sql: SQL) -> set[str]:
    rows = sql("SELECT relname FROM pg_class WHERE relname LIKE 'retention_daily_%'")
    return {f"public.{r[0]}" for r in rows}


def _assert_writer_unblocked(latencies: list[float]) -> None:
    # Each write waited at most one lock_timeout, and the stalls add up to about one too:
    # the run queued writers once at most, not once per partition or per retry (that was
    # 20 stalls of a lock_timeout here).
    assert max(latencies) <= LOCK_TIMEOUT_S + MARGIN_S, max(latencies)
    stalled = sum(x for x in latencies if x > LOCK_TIMEOUT_S / 2)
    assert stalled <= 2 * LOCK_TIMEOUT_S + MARGIN_S, stalled


def test_a_reader_of_an_expired_partition_keeps_it_until_the_next_run(
    sql: SQL,
    database_url: str,
    log_lines: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    daily_partitions: datetime,
) -> None:
    d = _fill_days(sql, daily_partitions)
    monkeypatch.setenv("RETENTION_POLICIES", policies(("retention_daily", "received_at", 30, 50)))
    held = "public.retention_daily_02"  # D-33: expired

    with (
        holding(database_url, "SELECT count(*) FROM retention_daily_02") as end_reader,
        writer(database_url, "retention_daily") as latencies,
    ):
        first = run({"runId": "reader-holds-a-partition"})
        end_reader()

    assert first["status"] == "stopped"  # not failed: the run went on without it
    (entry,) = audit_entries(sql, first["runId"], "retention_daily")
    cutoff = datetime.fromisoformat(entry["cutoff"])
    expected = _expired_partitions(sql, cutoff, d)
    assert held in expected and len(expected) >= 4
    assert entry["partitionsSkipped"] == [held]
    assert entry["partitionsDropped"] == [p for p in expected if p != held]
    assert (entry["completed"], entry["stoppedBy"]) == (False, "locked")
    assert _existing(sql) & set(expected) == {held}
    (line,) = lines(log_lines, type="retention", table="retention_daily")
    assert line["partitionsSkipped"] == [held]
    (warning,) = lines(log_lines, type="retention_warning", warning="locked")
    assert (warning["relation"], warning["lock"]) == (held, "partition")
    _assert_writer_unblocked(latencies)

    second = run({"runId": "after-the-reader"})

    assert second["status"] == "completed"
    (entry,) = audit_entries(sql, second["runId"], "retention_daily")
    assert entry["partitionsDropped"] == [held] and entry["completed"] is True
    assert not _existing(sql) & set(expected)
    assert sql("SELECT min(received_at) >= :c FROM retention_daily", c=cutoff) == [[True]]


def test_a_reader_of_the_parent_costs_writers_one_lock_timeout_then_the_next_run_drops(
    sql: SQL,
    database_url: str,
    log_lines: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    daily_partitions: datetime,
) -> None:
    d = _fill_days(sql, daily_partitions)
    monkeypatch.setenv("RETENTION_POLICIES", policies(("retention_daily", "received_at", 30, 50)))
    # A long report on today's rows: ACCESS SHARE on the parent and on the partitions the
    # planner kept (a literal bound prunes the old ones at plan time).
    report = f"SELECT count(*) FROM retention_daily WHERE received_at >= '{d.isoformat()}'"

    with (
        holding(database_url, report) as end_reader,
        writer(database_url, "retention_daily") as latencies,
    ):
        first = run({"runId": "reader-holds-the-parent"})
        end_reader()

    assert first["status"] == "stopped"
    (entry,) = audit_entries(sql, first["runId"], "retention_daily")
    cutoff = datetime.fromisoformat(entry["cutoff"])
    expected = _expired_partitions(sql, cutoff, d)
    # The first drop gave up on the parent; the others were not tried (they would have
    # queued the writers again).
    assert entry["partitionsSkipped"] == expected and entry["partitionsDropped"] == []
    assert entry["rowsDeleted"] > 0  # the boundary partition was pruned all the same
    assert set(expected) <= _existing(sql)
    warnings = lines(log_lines, type="retention_warning", warning="locked")
    assert [(w["relation"], w["lock"]) for w in warnings] == [(expected[0], "parent")], warnings
    _assert_writer_unblocked(latencies)

    second = run({"runId": "after-the-report"})

    assert second["status"] == "completed"
    (entry,) = audit_entries(sql, second["runId"], "retention_daily")
    assert entry["partitionsDropped"] == expected
    assert not _existing(sql) & set(expected)


def test_a_locked_table_is_left_for_the_next_run_and_the_others_are_pruned(
    sql: SQL, database_url: str, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    seed(sql)
    # CREATE INDEX (not CONCURRENTLY) holds SHARE: no row of chat_sessions can be deleted.
    with holding(database_url, "LOCK TABLE chat_sessions IN SHARE MODE") as end_ddl:
        first = run({"runId": "table-locked"})
        end_ddl()

    assert first["status"] == "stopped"
    assert count(sql, "inbound_events", "event_type = 'expired'") == 0
    assert count(sql, "chat_sessions", "user_ref = 'expired'") == 4
    (entry,) = audit_entries(sql, first["runId"], "chat_sessions")
    assert entry["relationsSkipped"] == ["public.chat_sessions"]
    assert (entry["deleted"], entry["completed"], entry["stoppedBy"]) == (0, False, "locked")
    (warning,) = lines(log_lines, type="retention_warning", warning="locked")
    assert (warning["relation"], warning["lock"]) == ("public.chat_sessions", "table")

    second = run({"runId": "table-unlocked"})

    assert second["status"] == "completed"
    assert count(sql, "chat_sessions", "user_ref = 'expired'") == 0
    (entry,) = audit_entries(sql, second["runId"], "chat_sessions")
    assert (entry["deleted"], entry["completed"]) == (4, True)
