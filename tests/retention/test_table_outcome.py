"""A table's outcome and its three renderings: audit payload, log line, response entry.

The keys are what the runbook's audit queries, the Logs Insights queries, the
dashboards and the benchmarks read; the end-to-end test checks that the audit entry
in PostgreSQL, the log line and the response say the same of every table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from retention.model import StopReason, Survey, TableExit, TableOutcome, Trigger
from retention.report import audit_payload, log_fields, response_entry
from tests.support.db import SQL
from tests.support.retention import audit_entries, event, lines, policies, run, seed

CUTOFF = datetime(2026, 10, 30, 18, 38, 40, 679531, tzinfo=UTC)
CUTOFF_TEXT = "2026-10-30T18:38:40.679531Z"
AUDIT_COLUMNS = {"entity", "actor_type", "actor_id", "action"}


def outcome(table_exit: TableExit, **fields: Any) -> TableOutcome:
    base = TableOutcome(
        table="retention_daily",
        run_id="manual:r1",
        trigger=Trigger.MANUAL,
        attempt=2,
        dry_run=False,
        cutoff=CUTOFF,
        rows_deleted=3,
        batches=1,
        partitions_dropped=("public.retention_daily_00", "public.retention_daily_01"),
        partition_rows_estimate=11,
        exit=table_exit,
    )
    return replace(base, **fields)


def locked() -> TableOutcome:
    table_exit = TableExit(
        completed=False,
        duration_ms=213,
        stopped_by=StopReason.LOCKED,
        partitions_skipped=("public.retention_daily_02",),
    )
    return outcome(table_exit)


def test_the_audit_payload_has_the_seed_deleted_and_every_count() -> None:
    assert audit_payload(locked()) == {
        "deleted": 14,
        "runId": "manual:r1",
        "trigger": "manual",
        "attempt": 2,
        "dryRun": False,
        "cutoff": CUTOFF_TEXT,
        "rowsDeleted": 3,
        "batches": 1,
        "partitionsDropped": ["public.retention_daily_00", "public.retention_daily_01"],
        "partitionRowsEstimate": 11,
        "completed": False,
        "durationMs": 213,
        "stoppedBy": "locked",
        "partitionsSkipped": ["public.retention_daily_02"],
    }
    assert type(audit_payload(locked())["stoppedBy"]) is str  # the value, not the enum


def test_the_log_line_counts_partitions_and_names_them_apart() -> None:
    assert log_fields(locked()) == {
        "type": "retention",
        "table": "retention_daily",
        "runId": "manual:r1",
        "deleted": 14,
        "rowsDeleted": 3,
        "batches": 1,
        "partitionsDropped": 2,
        "cutoff": CUTOFF_TEXT,
        "completed": False,
        "dryRun": False,
        "durationMs": 213,
        "partitionRowsEstimate": 11,
        "stoppedBy": "locked",
        "partitionsSkipped": ["public.retention_daily_02"],
        "droppedPartitions": ["public.retention_daily_00", "public.retention_daily_01"],
    }


def test_the_response_entry_is_the_audit_payload_with_the_table() -> None:
    assert response_entry(locked()) == {"table": "retention_daily", **audit_payload(locked())}


def test_a_table_an_earlier_attempt_finished_reports_zeros_and_no_audit_fields() -> None:
    done = outcome(
        TableExit(completed=True, duration_ms=0),
        rows_deleted=0,
        batches=0,
        partitions_dropped=(),
        partition_rows_estimate=0,
        already_completed=True,
    )
    summary = {
        "runId": "manual:r1",
        "deleted": 0,
        "rowsDeleted": 0,
        "batches": 0,
        "partitionsDropped": [],
        "cutoff": CUTOFF_TEXT,
        "completed": True,
        "dryRun": False,
        "durationMs": 0,
    }
    assert response_entry(done) == {
        "table": "retention_daily",
        **summary,
        "alreadyCompleted": True,
    }
    assert log_fields(done) == {
        "type": "retention",
        "table": "retention_daily",
        **summary,
        "partitionsDropped": 0,
        "droppedPartitions": [],
    }


def test_each_particular_appears_only_on_the_outcomes_that_have_it() -> None:
    survey = Survey(5, datetime(2026, 9, 1, tzinfo=UTC), ["public.p_00"])
    dry = outcome(TableExit(completed=True, duration_ms=7, survey=survey), dry_run=True)
    crash = outcome(
        TableExit(
            completed=True, duration_ms=None, stopped_by=StopReason.CRASH, recovered_by="m:2"
        ),
    )
    failed = outcome(
        TableExit(completed=False, duration_ms=None, stopped_by=StopReason.ERROR, error="P0001: x"),
    )
    base = set(audit_payload(outcome(TableExit(completed=True, duration_ms=1))))
    assert set(audit_payload(dry)) - base == {"wouldDelete", "oldest", "wouldDropPartitions"}
    assert audit_payload(dry)["oldest"] == "2026-09-01T00:00:00Z"
    assert audit_payload(crash).items() >= {"stoppedBy": "crash", "recoveredBy": "m:2"}.items()
    assert audit_payload(failed).items() >= {"stoppedBy": "error", "error": "P0001: x"}.items()
    assert set(audit_payload(crash)) - base == {"recoveredBy"}
    assert set(audit_payload(failed)) - base == {"error"}


@pytest.mark.usefixtures("retention_slate")
def test_the_audit_entry_the_log_line_and_the_response_agree(
    sql: SQL, log_lines: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        policies(("inbound_events", "received_at", 30, 3), ("chat_sessions", "updated_at", 90, 3)),
    )
    seed(sql)

    result = run(event("retention-scheduler.json"))

    assert len(result["tables"]) == 2
    for entry in result["tables"]:
        table = entry.pop("table")
        (audited,) = audit_entries(sql, result["runId"], table)
        payload = {k: v for k, v in audited.items() if k not in AUDIT_COLUMNS}
        assert payload == entry  # the response entry is the payload PostgreSQL stored
        (line,) = lines(log_lines, type="retention", table=table)
        shared = ("runId", "deleted", "rowsDeleted", "batches", "cutoff", "completed", "dryRun")
        assert {k: line[k] for k in shared} == {k: entry[k] for k in shared}
        assert line["droppedPartitions"] == entry["partitionsDropped"]
        assert line["partitionsDropped"] == len(entry["partitionsDropped"])
        assert entry["deleted"] > 0 and entry["stoppedBy"] is None
