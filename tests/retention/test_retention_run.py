"""The retention function end to end on a real PostgreSQL: prune, audit, dry run, refuse."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from ops.retention_policies import PolicyError
from tests.support.db import SQL
from tests.support.metrics import scrape_samples, value
from tests.support.retention import (
    EVENTS,
    audit_entries,
    count,
    event,
    lines,
    policies,
    run,
    seed,
)
from tests.support.runtime import run_tool
from tools import ROOT

pytestmark = pytest.mark.usefixtures("retention_slate")

PAYLOAD_KEYS = {
    "deleted",
    "rowsDeleted",
    "cutoff",
    "batches",
    "partitionsDropped",
    "durationMs",
    "completed",
    "dryRun",
    "runId",
}


def test_scheduled_run_prunes_each_table_and_audits_it_once(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        policies(("inbound_events", "received_at", 30, 3), ("chat_sessions", "updated_at", 90, 3)),
    )
    seed(sql)
    before = sql("SELECT now()")[0][0]

    result = run(event("retention-scheduler.json"))

    after = sql("SELECT now()")[0][0]
    assert result["status"] == "completed"
    run_id = result["runId"]
    assert count(sql, "inbound_events") == count(sql, "inbound_events", "event_type = 'fresh'") == 3
    assert count(sql, "chat_sessions") == count(sql, "chat_sessions", "user_ref = 'fresh'") == 2

    events_audit, sessions_audit = (
        audit_entries(sql, run_id, "inbound_events"),
        audit_entries(sql, run_id, "chat_sessions"),
    )
    assert len(events_audit) == len(sessions_audit) == 1
    for entry, deleted, batches, age in (
        (events_audit[0], 7, 3, 30),
        (sessions_audit[0], 4, 2, 90),
    ):
        assert set(entry) >= PAYLOAD_KEYS
        assert (entry["actor_type"], entry["actor_id"], entry["action"]) == (
            "system",
            "retention-job",
            "retention.prune",
        )
        assert (entry["rowsDeleted"], entry["batches"], entry["partitionsDropped"]) == (
            deleted,
            batches,
            [],
        )
        # The seed's own field, which auditors query as payload->>'deleted'.
        assert entry["deleted"] == deleted
        assert (entry["completed"], entry["dryRun"], entry["runId"]) == (True, False, run_id)
        assert isinstance(entry["durationMs"], int) and entry["durationMs"] >= 0
        # The cutoff comes from the database clock during the run.
        cutoff = datetime.fromisoformat(entry["cutoff"])
        assert before - timedelta(days=age) <= cutoff <= after - timedelta(days=age)

    jobs = lines(log_lines, type="job", name="retention")
    assert [j["status"] for j in jobs] == ["started", "completed"]
    assert jobs[-1]["rowsDeleted"] == 11 and jobs[-1]["allTablesCompleted"] is True
    per_table = {x["table"]: x for x in lines(log_lines, type="retention")}
    assert set(per_table) == {"inbound_events", "chat_sessions"}
    line = per_table["inbound_events"]
    assert {k: line[k] for k in ("deleted", "rowsDeleted", "batches", "completed", "dryRun")} == {
        "deleted": 7,
        "rowsDeleted": 7,
        "batches": 3,
        "completed": True,
        "dryRun": False,
    }
    assert line["partitionsDropped"] == 0 and line["cutoff"] == events_audit[0]["cutoff"]
    assert sql("SELECT status, attempts FROM retention_runs WHERE run_key = :k", k=run_id) == [
        ["completed", 1]
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in EVENTS.glob("retention-*.json")))
def test_every_sample_event_runs(sql: SQL, name: str) -> None:
    seed(sql)
    result = run(event(name))
    assert result["status"] == "completed"
    dry = json.loads((EVENTS / name).read_text()).get("dryRun", False)
    assert count(sql, "inbound_events") == (10 if dry else 3)
    assert {t["table"] for t in result["tables"]} == {"inbound_events", "chat_sessions"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retention-scheduler.json", "retention-dry-run.json"])
def test_tools_invoke_runs_the_function_with_an_event_file(
    sql: SQL, db_env: str, name: str
) -> None:
    seed(sql)
    proc = run_tool(
        "tools.runtime.invoke",
        "RetentionFunction",
        "--event",
        f"events/{name}",
        env={"DATABASE_URL": db_env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed"
    assert count(sql, "inbound_events") == (10 if "dry" in name else 3)
    assert '"status":"started"' in proc.stderr and '"type":"retention"' in proc.stderr


def test_dry_run_reports_counts_and_oldest_row_and_deletes_nothing(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    seed(sql)
    oldest = sql("SELECT min(received_at) FROM inbound_events")[0][0]

    result = run(event("retention-dry-run.json"))

    assert (result["status"], result["dryRun"]) == ("completed", True)
    assert count(sql, "inbound_events") == 10 and count(sql, "chat_sessions") == 6
    report = {t["table"]: t for t in result["tables"]}
    assert report["inbound_events"]["wouldDelete"] == 7
    assert report["chat_sessions"]["wouldDelete"] == 4
    assert datetime.fromisoformat(report["inbound_events"]["oldest"]) == oldest
    (entry,) = audit_entries(sql, result["runId"], "inbound_events")
    assert (entry["dryRun"], entry["rowsDeleted"], entry["wouldDelete"]) == (True, 0, 7)
    assert all(x["dryRun"] is True for x in lines(log_lines, type="retention"))


def test_dry_run_can_be_limited_to_some_tables(sql: SQL) -> None:
    seed(sql)
    result = run(event("retention-dry-run.json", tables=["chat_sessions"]))
    assert [t["table"] for t in result["tables"]] == ["chat_sessions"]


def test_a_table_no_policy_names_is_refused(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    seed(sql)
    with pytest.raises(PolicyError, match="no retention policy names 'audit_logs'"):
        run({"tables": ["inbound_events", "audit_logs"]})
    assert count(sql, "inbound_events") == 10
    assert lines(log_lines, type="job", status="failed")


@pytest.fixture
def odd_tables(sql: SQL) -> Iterator[None]:
    sql("CREATE OR REPLACE VIEW retention_view AS SELECT * FROM inbound_events")
    sql(
        "CREATE TABLE IF NOT EXISTS retention_child (id int PRIMARY KEY, "
        "event_id bigint REFERENCES inbound_events (id) ON DELETE CASCADE)"
    )
    yield
    sql("DROP VIEW retention_view")
    sql("DROP TABLE retention_child")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"table": "no_such_table", "column": "at", "maxAgeDays": 1}, "does not exist"),
        (
            {"table": "chat_sessions", "column": "channel", "maxAgeDays": 1},
            "of public.chat_sessions is text;",
        ),
        ({"table": "chat_sessions", "column": "no_such", "maxAgeDays": 1}, "column no_such does"),
        ({"table": "retention_view", "column": "received_at", "maxAgeDays": 1}, "not a table"),
        (
            {"table": "chat_sessions; DELETE FROM inbound_events", "column": "x", "maxAgeDays": 1},
            "lower-case identifier",
        ),
        ({"table": "chat_sessions", "column": "updated_at", "maxAgeDays": 0}, "maxAgeDays"),
        ({"table": "chat_sessions", "column": "updated_at", "maxAgeDays": -5}, "maxAgeDays"),
        ({"table": "audit_logs", "column": "occurred_at", "maxAgeDays": 1}, "never pruned"),
    ],
)
def test_invalid_policies_delete_nothing(
    sql: SQL,
    log_lines: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    odd_tables: None,
    bad: dict[str, object],
    message: str,
) -> None:
    seed(sql)
    valid = {"table": "inbound_events", "column": "received_at", "maxAgeDays": 30}
    monkeypatch.setenv("RETENTION_POLICIES", json.dumps([valid, bad]))
    audits_before = count(sql, "audit_logs")

    with pytest.raises(PolicyError, match=message):
        run(event("retention-scheduler.json"))

    assert count(sql, "inbound_events") == 10 and count(sql, "chat_sessions") == 6
    assert count(sql, "audit_logs") == audits_before
    assert count(sql, "retention_runs") == 0
    (failed,) = lines(log_lines, type="job", status="failed")
    assert message in failed["error"] and failed["errorType"] == "PolicyError"


def test_deleting_that_would_cascade_into_another_table_is_refused(
    sql: SQL, monkeypatch: pytest.MonkeyPatch, odd_tables: None
) -> None:
    seed(sql)
    monkeypatch.setenv("RETENTION_POLICIES", policies(("inbound_events", "received_at", 30, 10)))
    with pytest.raises(PolicyError, match="cascade into retention_child"):
        run({})
    assert count(sql, "inbound_events") == 10


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM audit_logs",
        "UPDATE audit_logs SET action = 'x'",
        "TRUNCATE audit_logs",
    ],
)
def test_audit_log_cannot_be_deleted_updated_or_truncated(sql: SQL, statement: str) -> None:
    sql(
        "INSERT INTO audit_logs (actor_type, actor_id, action, entity) "
        "VALUES ('system', 'test', 'test.append_only', 'audit_logs')"
    )
    before = count(sql, "audit_logs")
    with pytest.raises(DatabaseError, match="append-only"):
        sql(statement)
    assert count(sql, "audit_logs") == before


def test_missing_index_is_warned_before_the_run_and_pruning_still_works(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sql("DROP TABLE IF EXISTS retention_noindex")
    sql("CREATE TABLE retention_noindex (id int PRIMARY KEY, seen_at timestamptz NOT NULL)")
    sql(
        "INSERT INTO retention_noindex SELECT g, now() - make_interval(days => g) "
        "FROM generate_series(1, 20) g"
    )
    monkeypatch.setenv("RETENTION_POLICIES", policies(("retention_noindex", "seen_at", 10, 3)))
    try:
        result = run({})
        assert result["status"] == "completed"
        assert count(sql, "retention_noindex") == 9  # days 1..9 kept; 10 is a few ms past
    finally:
        sql("DROP TABLE retention_noindex")
    logged = log_lines()
    (warning,) = [x for x in logged if x.get("warning") == "missing_index"]
    assert (warning["table"], warning["column"], warning["level"]) == (
        "retention_noindex",
        "seen_at",
        "WARNING",
    )
    first_table_line = next(i for i, x in enumerate(logged) if x.get("type") == "retention")
    assert logged.index(warning) < first_table_line
    assert value(scrape_samples(), "retention_missing_index", table="retention_noindex") == 1


def test_partitioned_table_drops_old_partitions_and_audits_them(
    sql: SQL,
    log_lines: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    daily_partitions: datetime,
) -> None:
    sql(
        "INSERT INTO retention_daily (received_at) "
        "SELECT now() - make_interval(hours => g) FROM generate_series(1, 35 * 24, 5) g"
    )
    sql("ANALYZE retention_daily")
    stamps = [r[0] for r in sql("SELECT received_at FROM retention_daily")]
    monkeypatch.setenv("RETENTION_POLICIES", policies(("retention_daily", "received_at", 30, 4)))

    result = run(event("retention-scheduled-event.json"))

    (entry,) = audit_entries(sql, result["runId"], "retention_daily")
    cutoff = datetime.fromisoformat(entry["cutoff"])
    expected_drops = [
        f"public.retention_daily_{n + 35:02d}"
        for n in range(-35, 2)
        if daily_partitions + timedelta(days=n + 1) <= cutoff
    ]
    assert len(expected_drops) >= 4
    assert entry["partitionsDropped"] == expected_drops
    # Rows of dropped partitions are counted by statistics (exact after ANALYZE), not scanned.
    boundary = daily_partitions + timedelta(days=len(expected_drops) - 35)
    assert entry["rowsDeleted"] == sum(1 for s in stamps if boundary <= s < cutoff)
    assert entry["partitionRowsEstimate"] == sum(1 for s in stamps if s < boundary)
    assert entry["deleted"] == entry["rowsDeleted"] + entry["partitionRowsEstimate"]
    assert entry["deleted"] == sum(1 for s in stamps if s < cutoff)
    assert entry["completed"] is True
    assert sql("SELECT min(received_at) >= :c FROM retention_daily", c=cutoff) == [[True]]
    assert count(sql, "retention_daily") == sum(1 for s in stamps if s >= cutoff)
    remaining = {
        r[0] for r in sql("SELECT relname FROM pg_class WHERE relname LIKE 'retention_daily_%'")
    }
    assert not remaining & {d.split(".")[1] for d in expected_drops}
    (line,) = lines(log_lines, type="retention", table="retention_daily")
    assert line["partitionsDropped"] == len(expected_drops)
    assert line["droppedPartitions"] == expected_drops


def test_the_runbooks_audit_query_shows_what_each_entry_deleted(
    sql: SQL, database_url: str
) -> None:
    """The debugging checklist's audit query, run as written, reads the seed's `deleted`."""
    from ops.db import connect_url

    runbook = (ROOT / "infra" / "monitoring" / "README.md").read_text()
    (query,) = re.findall(r"`(SELECT [^`]*FROM audit_logs[^`]*)`", runbook)
    assert "payload->>'deleted'" in query
    seed(sql)
    result = run(event("retention-scheduler.json"))

    conn = connect_url(database_url, timeout_s=10)
    try:
        rows = conn.run(query)
        names = [c["name"] for c in conn.columns]
    finally:
        conn.close()
    shown = [dict(zip(names, r, strict=True)) for r in rows]
    mine = {r["entity"]: r["deleted"] for r in shown if r["run_id"] == result["runId"]}
    assert mine == {"inbound_events": "7", "chat_sessions": "4"}
