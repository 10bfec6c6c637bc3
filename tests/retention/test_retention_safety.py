"""Retention under at-least-once delivery: duplicates, concurrent runs, deadlines, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pg8000.native
import pytest
from pg8000.exceptions import DatabaseError

from ops import db as ops_db
from ops.db import Database
from retention.model import LeaseLost
from tests.support.db import SQL
from tests.support.metrics import Samples, scrape_samples
from tests.support.retention import (
    FAST_SETTINGS,
    Crash,
    FakeContext,
    audit_entries,
    count,
    event,
    lines,
    policies,
    run,
    seed,
)
from tools import PYTHONPATH, ROOT

pytestmark = pytest.mark.usefixtures("retention_slate")

MARGIN_MS = int(FAST_SETTINGS["RETENTION_DEADLINE_MARGIN_MS"])
SMALL_BATCHES = policies(
    ("inbound_events", "received_at", 30, 4), ("chat_sessions", "updated_at", 90, 4)
)


def expired(sql: SQL) -> tuple[int, int]:
    return (
        count(sql, "inbound_events", "event_type = 'expired'"),
        count(sql, "chat_sessions", "user_ref = 'expired'"),
    )


def fresh(sql: SQL) -> tuple[int, int]:
    return (
        count(sql, "inbound_events", "event_type = 'fresh'"),
        count(sql, "chat_sessions", "user_ref = 'fresh'"),
    )


def audited_rows(sql: SQL, run_id: str, table: str) -> int:
    return sum(e["rowsDeleted"] for e in audit_entries(sql, run_id, table))


def new_container() -> None:
    """What a retry after a crash gets: a fresh container, no connection kept."""
    ops_db.reset()


# -- duplicate deliveries -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "redelivery"),
    [
        (
            "retention-scheduler.json",
            {"executionId": "9b1f-new-execution", "attemptNumber": "2"},
        ),
        ("retention-scheduled-event.json", {"time": "2026-11-22T03:00:07Z"}),
    ],
)
def test_duplicate_delivery_neither_prunes_again_nor_audits_again(
    sql: SQL,
    log_lines: Callable[[], list[dict[str, Any]]],
    name: str,
    redelivery: dict[str, str],
) -> None:
    seed(sql)
    first = run(event(name))
    assert first["status"] == "completed" and expired(sql) == (0, 0)
    # Rows that expire after the run must wait for the next run, not this run's duplicate.
    seed(sql, events_fresh=0, sessions_fresh=0)
    audits = count(sql, "audit_logs")

    again = run(event(name, **redelivery))

    assert (again["status"], again["reason"], again["runId"]) == (
        "skipped",
        "duplicate",
        first["runId"],
    )
    assert expired(sql) == (7, 4)
    assert count(sql, "audit_logs") == audits
    assert len(audit_entries(sql, first["runId"])) == 2
    (skipped,) = lines(log_lines, type="job", status="skipped")
    assert skipped["reason"] == "duplicate" and skipped["name"] == "retention"


def test_manual_runs_are_told_apart_by_request_id_and_retries_of_one_are_not(sql: SQL) -> None:
    seed(sql)
    assert run({}, FakeContext(request_id="req-a"))["status"] == "completed"
    seed(sql, events_fresh=0, sessions_fresh=0)
    assert run({}, FakeContext(request_id="req-a"))["status"] == "skipped"
    assert expired(sql) == (7, 4)
    assert run({}, FakeContext(request_id="req-b"))["status"] == "completed"
    assert expired(sql) == (0, 0)


# -- concurrent runs ------------------------------------------------------------------------------
class Pausing(FakeContext):
    """Blocks the run holding the lease at its `pause_at`-th look until `until()` is true."""

    def __init__(self, pause_at: int, until: Callable[[], bool], **kw: Any) -> None:
        super().__init__(**kw)
        self.pause_at, self.until = pause_at, until

    def get_remaining_time_in_millis(self) -> int:
        if self.looks + 1 == self.pause_at:
            deadline = time.monotonic() + 20
            while not self.until() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().get_remaining_time_in_millis()


def _in_thread(
    evt: Any, context: FakeContext, results: dict[str, Any], name: str
) -> threading.Thread:
    from retention.run import run_retention

    def target() -> None:
        db = Database(application_name=f"retention-test-{name}")
        try:
            results[name] = run_retention(evt, context, db)
        except BaseException as exc:
            results[name] = exc
        finally:
            db.close()

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


@pytest.mark.parametrize("same_run", [False, True], ids=["different-runs", "same-run-twice"])
def test_two_runs_at_once_do_not_overlap(
    sql: SQL,
    log_lines: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    same_run: bool,
) -> None:
    monkeypatch.setenv("RETENTION_POLICIES", SMALL_BATCHES)
    seed(sql, events_expired=40)

    def waiting() -> bool:
        return bool(lines(log_lines, type="job", status="waiting"))

    first_event = event("retention-scheduler.json")
    second_event = first_event if same_run else event("retention-scheduled-event.json")
    results: dict[str, Any] = {}

    # The first run pauses mid-table, holding the lease, until the second says it waits.
    first = _in_thread(first_event, Pausing(5, waiting), results, "first")
    while not sql("SELECT holder IS NOT NULL FROM retention_lease")[0][0]:
        time.sleep(0.01)
    second = _in_thread(second_event, FakeContext(), results, "second")
    first.join(60)
    second.join(60)

    assert waiting(), "the second run neither waited nor skipped"
    assert results["first"]["status"] == "completed"
    assert expired(sql) == (0, 0) and fresh(sql) == (3, 2)
    first_id = results["first"]["runId"]
    if same_run:
        assert (results["second"]["status"], results["second"]["reason"]) == (
            "skipped",
            "duplicate",
        )
        assert len(audit_entries(sql, first_id)) == 2
    else:
        assert results["second"]["status"] == "completed"
        spans = sql(
            "SELECT run_key, attempt_started_at, finished_at FROM retention_runs "
            "ORDER BY attempt_started_at"
        )
        assert [s[0] for s in spans] == [first_id, results["second"]["runId"]]
        assert spans[0][2] <= spans[1][1], "the second run started before the first finished"
        assert audited_rows(sql, first_id, "inbound_events") == 40
        assert audited_rows(sql, results["second"]["runId"], "inbound_events") == 0


def test_run_skips_and_says_so_when_a_live_run_holds_the_lease(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    seed(sql)
    sql(
        "UPDATE retention_lease SET holder = 'other-invocation', run_key = 'manual:other', "
        "acquired_at = now(), expires_at = now() + interval '1 hour'"
    )
    # 400 ms left: a 100 ms margin (a quarter), so it waits 300 ms, then gives up.
    result = run({}, FakeContext(remaining_ms=400))

    assert (result["status"], result["reason"], result["heldBy"]) == (
        "skipped",
        "busy",
        "manual:other",
    )
    assert expired(sql) == (7, 4)
    assert not audit_entries(sql, result["runId"])
    (skipped,) = lines(log_lines, type="job", status="skipped")
    assert skipped["heldBy"] == "manual:other"


# -- deadlines ------------------------------------------------------------------------------------
@pytest.mark.parametrize("then", ["redelivered", "next day"])
def test_deadline_mid_table_stops_cleanly_and_the_next_run_completes(
    sql: SQL,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
    then: str,
) -> None:
    monkeypatch.setenv("RETENTION_POLICIES", SMALL_BATCHES)
    seed(sql, events_expired=40)
    # A virtual clock: each look costs a second; the run gets about seven looks.
    result = run(
        event("retention-scheduler.json"),
        FakeContext(remaining_ms=MARGIN_MS + 7_500, step_ms=1_000),
    )

    assert result["status"] == "stopped"
    left_events, left_sessions = expired(sql)
    assert 0 < left_events < 40 and left_sessions == 4
    assert fresh(sql) == (3, 2)
    (events_entry,) = audit_entries(sql, result["runId"], "inbound_events")
    (sessions_entry,) = audit_entries(sql, result["runId"], "chat_sessions")
    assert events_entry["rowsDeleted"] == 40 - left_events
    assert (events_entry["completed"], events_entry["stoppedBy"]) == (False, "deadline")
    assert (sessions_entry["completed"], sessions_entry["rowsDeleted"]) == (False, 0)
    assert lines(log_lines, type="job", status="completed")[0]["allTablesCompleted"] is False

    if then == "redelivered":  # the same run resumes where it stopped, with its cutoff
        second = run(event("retention-scheduler.json", executionId="redelivered"))
        assert (second["runId"], second["attempt"]) == (result["runId"], 2)
    else:
        second = run(event("retention-scheduler.json", scheduledTime="2026-11-23T03:00:00Z"))
        assert second["runId"] != result["runId"]

    assert second["status"] == "completed"
    assert expired(sql) == (0, 0) and fresh(sql) == (3, 2)
    entries = audit_entries(sql, second["runId"], "inbound_events")
    assert (entries[-1]["rowsDeleted"], entries[-1]["completed"]) == (left_events, True)
    assert (
        audited_rows(sql, result["runId"], "inbound_events")
        + (0 if then == "redelivered" else left_events)
        == 40
    )


def test_redelivered_stopped_run_resumes_with_its_own_cutoff_exact_to_the_second(sql: SQL) -> None:
    # No time at all: the run opens, fixes its cutoffs and stops before deleting anything.
    first = run(event("retention-scheduler.json"), FakeContext(remaining_ms=0))
    assert first["status"] == "stopped"
    cutoffs: dict[str, datetime] = {
        table: cutoff
        for table, cutoff in sql(
            "SELECT table_name, cutoff FROM retention_run_tables WHERE run_key = :k",
            k=first["runId"],
        )
    }
    offsets = {"1 s past": -1, "1 us past": -0.000_001, "at": 0, "1 s inside": 1}
    for label, seconds in offsets.items():
        sql(
            "INSERT INTO inbound_events (source, event_type, received_at) VALUES ('t', :l, :ts)",
            l=label,
            ts=cutoffs["inbound_events"] + timedelta(seconds=seconds),
        )
        sql(
            "INSERT INTO chat_sessions (channel, user_ref, updated_at) VALUES ('t', :l, :ts)",
            l=label,
            ts=cutoffs["chat_sessions"] + timedelta(seconds=seconds),
        )

    resumed = run(event("retention-scheduler.json", executionId="second-attempt"))

    assert (resumed["status"], resumed["attempt"], resumed["runId"]) == (
        "completed",
        2,
        first["runId"],
    )
    assert {r[0] for r in sql("SELECT event_type FROM inbound_events")} == {"at", "1 s inside"}
    assert {r[0] for r in sql("SELECT user_ref FROM chat_sessions")} == {"at", "1 s inside"}
    for table in ("inbound_events", "chat_sessions"):
        entries = audit_entries(sql, first["runId"], table)
        assert [(e["attempt"], e["completed"], e["rowsDeleted"]) for e in entries] == [
            (1, False, 0),
            (2, True, 2),
        ]
        assert {e["cutoff"] for e in entries} == {cutoffs[table].isoformat().replace("+00:00", "Z")}


# -- crashes and failures -------------------------------------------------------------------------
class CrashingDatabase(Database):
    """Dies as the `crash_at`-th transaction is about to begin: after a batch, before the next."""

    def __init__(self, crash_at: int) -> None:
        super().__init__(application_name="retention-test-crash")
        self.crash_at, self.transactions = crash_at, 0

    @contextmanager
    def transaction(self, **timeouts: int | None) -> Iterator[pg8000.native.Connection]:
        self.transactions += 1
        if self.transactions == self.crash_at:
            raise Crash(f"crashed before transaction {self.transactions}")
        with super().transaction(**timeouts) as conn:
            yield conn


def _crash(sql: SQL, where: str) -> str:
    """Run until a crash mid-table; returns the run key. Batches are 4 rows."""
    from retention.run import run_retention

    seed(sql, events_expired=30)
    evt = event("retention-scheduler.json")
    db: Database
    if where == "between batches":
        # 1 start, 2 first batch, ..., 5 fourth batch: dies after three batches committed.
        db, context = CrashingDatabase(crash_at=5), FakeContext()
    else:
        # Looks: 1 lease wait, 2 table, 3 pruner, 4.. one per batch inside its transaction.
        db, context = Database(), FakeContext(crash_at=7)
    with pytest.raises(Crash):
        run_retention(evt, context, db)
    db.discard()  # the process is gone: its connection with it
    ((run_key,),) = sql("SELECT run_key FROM retention_runs")
    return str(run_key)


@pytest.mark.parametrize("where", ["between batches", "inside a batch"])
def test_crash_midway_then_retry_finishes_with_every_row_audited_once(
    sql: SQL,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
    where: str,
) -> None:
    monkeypatch.setenv("RETENTION_POLICIES", SMALL_BATCHES)
    run_key = _crash(sql, where)

    deleted = 30 - expired(sql)[0]
    assert deleted == 12  # three batches of four committed, whichever way it died
    assert fresh(sql) == (3, 2), "a row inside the cutoff was deleted"
    progress = sql(
        "SELECT rows_deleted, audited_rows FROM retention_run_tables "
        "WHERE run_key = :k AND table_name = 'inbound_events'",
        k=run_key,
    )
    assert progress == [[deleted, 0]], "progress must count exactly what was committed"
    assert not audit_entries(sql, run_key)

    new_container()
    retry = run(event("retention-scheduler.json", executionId="retry", attemptNumber="2"))

    # The crashed attempt's lease had to expire first: the retry waited, and said so.
    assert lines(log_lines, type="job", status="waiting")[0]["heldBy"] == run_key
    assert (retry["status"], retry["runId"], retry["attempt"]) == ("completed", run_key, 2)
    assert expired(sql) == (0, 0) and fresh(sql) == (3, 2)
    (entry,) = audit_entries(sql, run_key, "inbound_events")
    assert (entry["rowsDeleted"], entry["completed"]) == (30, True)
    assert audited_rows(sql, run_key, "chat_sessions") == 4


def test_crash_then_another_run_audits_what_the_crashed_one_deleted(
    sql: SQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_POLICIES", SMALL_BATCHES)
    crashed = _crash(sql, "between batches")
    new_container()
    sql("UPDATE retention_lease SET expires_at = now()")  # as if the TTL had passed

    result = run({})

    (recovered,) = audit_entries(sql, crashed, "inbound_events")
    assert (recovered["rowsDeleted"], recovered["completed"], recovered["stoppedBy"]) == (
        12,
        False,
        "crash",
    )
    assert recovered["recoveredBy"] == result["runId"]
    assert audited_rows(sql, result["runId"], "inbound_events") == 18
    assert expired(sql) == (0, 0) and fresh(sql) == (3, 2)


@pytest.fixture
def poisoned(sql: SQL) -> Iterator[None]:
    """retention_poison: deleting the row labelled 'poison' fails (as a broken trigger would)."""
    sql("DROP TABLE IF EXISTS retention_poison")
    sql(
        "CREATE TABLE retention_poison (id int PRIMARY KEY, at timestamptz NOT NULL, "
        "label text NOT NULL)"
    )
    sql("CREATE INDEX ON retention_poison (at)")
    sql(
        "CREATE FUNCTION retention_poison_guard() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF OLD.label = 'poison' THEN RAISE EXCEPTION 'poison row %', OLD.id; END IF; "
        "RETURN OLD; END $$"
    )
    sql(
        "CREATE TRIGGER retention_poison_guard BEFORE DELETE ON retention_poison "
        "FOR EACH ROW EXECUTE FUNCTION retention_poison_guard()"
    )
    # Ten expired rows, oldest first; the seventh is poisoned.
    sql(
        "INSERT INTO retention_poison SELECT g, "
        "now() - interval '40 days' + make_interval(mins => g), "
        "CASE WHEN g = 7 THEN 'poison' ELSE 'ok' END FROM generate_series(1, 10) g"
    )
    yield
    sql("DROP TABLE retention_poison")
    sql("DROP FUNCTION retention_poison_guard()")


def test_failure_midway_audits_what_was_deleted_then_raises(
    sql: SQL,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
    poisoned: None,
) -> None:
    seed(sql)
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        policies(("retention_poison", "at", 30, 3), ("chat_sessions", "updated_at", 90, 3)),
    )

    with pytest.raises(DatabaseError, match="poison row 7"):
        run(event("retention-scheduler.json"))

    assert count(sql, "retention_poison") == 4  # batches 1-2 committed, batch 3 rolled back
    ((run_key, status, error),) = sql("SELECT run_key, status, last_error FROM retention_runs")
    assert status == "failed" and "poison row 7" in error
    (entry,) = audit_entries(sql, run_key, "retention_poison")
    assert (entry["rowsDeleted"], entry["batches"], entry["completed"]) == (6, 2, False)
    assert entry["stoppedBy"] == "error" and "poison row 7" in entry["error"]
    (untouched,) = audit_entries(sql, run_key, "chat_sessions")
    assert (untouched["rowsDeleted"], untouched["completed"]) == (0, False)
    assert expired(sql)[1] == 4
    # The lease is released so that Scheduler's retry can start at once.
    assert sql("SELECT holder FROM retention_lease") == [[None]]
    (failed,) = lines(log_lines, type="job", status="failed")
    assert "poison row 7" in failed["error"] and failed["name"] == "retention"
    assert [x["table"] for x in lines(log_lines, type="retention")] == [
        "retention_poison",
        "chat_sessions",
    ]


def test_holder_that_lost_its_lease_deletes_nothing_more(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    seed(sql)

    class Thief(FakeContext):
        def get_remaining_time_in_millis(self) -> int:
            if self.looks == 2:  # before the first batch: another run takes over
                sql("UPDATE retention_lease SET holder = 'thief', run_key = 'manual:thief'")
            return super().get_remaining_time_in_millis()

    with pytest.raises(LeaseLost, match="lost the retention lease"):
        run({}, Thief())

    assert expired(sql) == (7, 4)
    assert sql("SELECT holder FROM retention_lease") == [["thief"]]
    assert lines(log_lines, type="job", status="failed")


# -- metrics --------------------------------------------------------------------------------------
def test_metrics_reach_the_store_and_the_scrape(sql: SQL) -> None:
    def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    seed(sql)
    before = scrape_samples()
    result = run(event("retention-scheduler.json"))
    after = scrape_samples()

    assert delta(after, before, "retention_rows_deleted_total", table="inbound_events") == 7
    assert delta(after, before, "retention_rows_deleted_total", table="chat_sessions") == 4
    assert delta(after, before, "retention_runs_total", status="succeeded") == 1
    assert delta(after, before, "retention_run_duration_seconds_count") == 1
    assert after[("retention_missing_index", (("table", "inbound_events"),))] == 0
    # The metrics function's gauge reads this run's audit entry (completed, not a dry run).
    ((finished,),) = sql(
        "SELECT extract(epoch FROM max(occurred_at))::float8 FROM audit_logs "
        "WHERE entity = 'inbound_events' AND payload->>'runId' = :r",
        r=result["runId"],
    )
    last_success = ("retention_last_success_timestamp_seconds", (("table", "inbound_events"),))
    assert after[last_success] == pytest.approx(finished)

    run(event("retention-dry-run.json"))
    assert scrape_samples()[last_success] == after[last_success]


@pytest.mark.slow
def test_process_killed_mid_run_then_retry_finishes_with_every_row_audited_once(
    sql: SQL, db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real crash: SIGKILL of a process deleting in batches, whatever it was doing."""
    monkeypatch.setenv("RETENTION_POLICIES", policies(("inbound_events", "received_at", 30, 50)))
    seed(sql, events_expired=100_000, sessions_expired=0, sessions_fresh=0)
    evt = {"runId": "killed-mid-run"}
    script = (
        "from tools.runtime.handler import LambdaContext; "
        "from retention.app import lambda_handler; "
        f"lambda_handler({evt!r}, LambdaContext('RetentionFunction', 900))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = sql(
                "SELECT batches FROM retention_run_tables WHERE run_key = 'manual:killed-mid-run'"
            )
            if rows and rows[0][0] >= 5:
                break
            assert child.poll() is None, "the run ended before it could be killed"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()

    ((recorded,),) = sql(
        "SELECT rows_deleted FROM retention_run_tables WHERE run_key = 'manual:killed-mid-run'"
    )
    assert 0 < recorded < 100_000
    assert 100_000 - expired(sql)[0] == recorded, "progress must equal what was committed"
    assert fresh(sql)[0] == 3
    assert not audit_entries(sql, "manual:killed-mid-run")

    result = run(evt)

    assert (result["status"], result["attempt"]) == ("completed", 2)
    assert expired(sql)[0] == 0 and fresh(sql)[0] == 3
    assert audited_rows(sql, "manual:killed-mid-run", "inbound_events") == 100_000
