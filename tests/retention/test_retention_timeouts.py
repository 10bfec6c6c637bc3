"""Retention against slow statements and short invocations: timeouts sized per use, batches
that shrink until they fit, a deadline margin that follows the time the run was given."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pg8000.exceptions import DatabaseError

from ops.config import settings
from ops.db import get_db
from retention import pruning
from retention.run import Budget, job_database, run_limits
from tests.support.db import SQL
from tests.support.retention import (
    FAST_SETTINGS,
    FakeContext,
    audit_entries,
    count,
    event,
    policies,
    run,
    seed,
)

pytestmark = pytest.mark.usefixtures("retention_slate")


@pytest.fixture
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timing knobs as deployed (the retention slate shortens them for speed)."""
    for name in FAST_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def slow_deletes(sql: SQL) -> Iterator[None]:
    """Every DELETE statement on inbound_events takes 2.5 s (a busy table, a trigger)."""
    sql(
        "CREATE OR REPLACE FUNCTION retention_test_slow() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN PERFORM pg_sleep(2.5); RETURN NULL; END $$"
    )
    sql(
        "CREATE TRIGGER retention_test_slow BEFORE DELETE ON inbound_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION retention_test_slow()"
    )
    yield
    sql("DROP TRIGGER retention_test_slow ON inbound_events")
    sql("DROP FUNCTION retention_test_slow()")


@pytest.fixture
def slow_rows(sql: SQL) -> Iterator[Callable[[int, float], None]]:
    """retention_slow: deleting a row takes `delay` seconds (the row's own column)."""
    sql("DROP TABLE IF EXISTS retention_slow")
    sql(
        "CREATE TABLE retention_slow (id int PRIMARY KEY, at timestamptz NOT NULL, "
        "delay float8 NOT NULL)"
    )
    sql("CREATE INDEX ON retention_slow (at)")
    sql(
        "CREATE FUNCTION retention_slow_row() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN PERFORM pg_sleep(OLD.delay); RETURN OLD; END $$"
    )
    sql(
        "CREATE TRIGGER retention_slow_row BEFORE DELETE ON retention_slow "
        "FOR EACH ROW EXECUTE FUNCTION retention_slow_row()"
    )

    def fill(rows: int, delay: float) -> None:
        sql(
            "INSERT INTO retention_slow SELECT g, "
            "now() - interval '40 days' + make_interval(mins => g), :d "
            "FROM generate_series(1, :n) g",
            n=rows,
            d=delay,
        )

    yield fill
    sql("DROP TABLE retention_slow")
    sql("DROP FUNCTION retention_slow_row()")


def test_timeouts_per_use(db_env: str, default_settings: None) -> None:
    """Health and metrics keep the short defaults; the retention run's connection is sized
    for batches, its socket outwaiting its statement timeout."""
    container = get_db().connection()
    assert get_db().run("SHOW statement_timeout") == [["5s"]]
    assert container._usock.gettimeout() == 2.0

    job_db = job_database(settings())
    try:
        assert job_db.run("SHOW statement_timeout") == [["10s"]]
        assert job_db.connection()._usock.gettimeout() == 12.0
        # A transaction with a longer statement timeout (a dry run's count) outwaits it too.
        with job_db.transaction(statement_timeout_ms=60_000) as conn:
            assert conn.run("SHOW statement_timeout") == [["1min"]]
            assert conn._usock.gettimeout() == 62.0
        assert job_db.connection()._usock.gettimeout() == 12.0
    finally:
        job_db.close()


def test_delete_statements_of_2_5_s_each_complete_with_default_settings(
    sql: SQL, monkeypatch: pytest.MonkeyPatch, default_settings: None, slow_deletes: None
) -> None:
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        policies(("inbound_events", "received_at", 30, 4), ("chat_sessions", "updated_at", 90, 4)),
    )
    seed(sql)

    result = run(event("retention-scheduler.json"))

    assert result["status"] == "completed"
    assert count(sql, "inbound_events", "event_type = 'expired'") == 0
    assert count(sql, "chat_sessions", "user_ref = 'expired'") == 0
    assert count(sql, "inbound_events") == 3 and count(sql, "chat_sessions") == 2
    (events,) = audit_entries(sql, result["runId"], "inbound_events")
    (sessions,) = audit_entries(sql, result["runId"], "chat_sessions")
    assert (events["deleted"], events["rowsDeleted"], events["batches"]) == (7, 7, 2)
    assert (sessions["deleted"], sessions["completed"]) == (4, True)


def test_a_batch_over_its_statement_timeout_is_retried_smaller_until_it_fits(
    sql: SQL, monkeypatch: pytest.MonkeyPatch, slow_rows: Callable[[int, float], None]
) -> None:
    # 10 ms a row under a 200 ms statement timeout: 256 -> 128 -> 64 -> 32 -> 16 rows, four
    # cancelled batches before one fits; the floor is lowered so that small batches go on.
    monkeypatch.setattr(pruning, "MIN_BATCH_SIZE", 2)
    monkeypatch.setenv("RETENTION_STATEMENT_TIMEOUT_MS", "200")
    monkeypatch.setenv("RETENTION_POLICIES", policies(("retention_slow", "at", 30, 256)))
    slow_rows(60, 0.01)

    result = run({"runId": "slow-rows"})

    assert result["status"] == "completed"
    assert count(sql, "retention_slow") == 0
    (entry,) = audit_entries(sql, result["runId"], "retention_slow")
    # Exact through every cancelled (rolled back) batch: each row counted once.
    assert (entry["deleted"], entry["rowsDeleted"], entry["completed"]) == (60, 60, True)
    assert 60 // 16 <= entry["batches"] <= 60


def test_a_batch_cancelled_at_the_floor_fails_the_run_and_audits_what_was_done(
    sql: SQL, monkeypatch: pytest.MonkeyPatch, slow_rows: Callable[[int, float], None]
) -> None:
    monkeypatch.setattr(pruning, "MIN_BATCH_SIZE", 2)
    monkeypatch.setenv("RETENTION_STATEMENT_TIMEOUT_MS", "200")
    monkeypatch.setenv("RETENTION_POLICIES", policies(("retention_slow", "at", 30, 8)))
    slow_rows(4, 0.3)  # a single row takes longer than the statement timeout

    with pytest.raises(DatabaseError, match="statement timeout"):
        run({"runId": "too-slow"})

    assert count(sql, "retention_slow") == 4
    ((status, error),) = sql("SELECT status, last_error FROM retention_runs")
    assert status == "failed" and "57014" in error
    (entry,) = audit_entries(sql, "manual:too-slow", "retention_slow")
    assert (entry["deleted"], entry["completed"], entry["stoppedBy"]) == (0, False, "error")


@pytest.mark.parametrize(
    ("remaining_ms", "margin_ms", "statement_ms"),
    [(30_000, 7_500, 2_500), (60_000, 15_000, 5_000), (900_000, 30_000, 10_000)],
)
def test_the_margin_is_a_quarter_of_the_time_at_start_up_to_30_s(
    default_settings: None, remaining_ms: int, margin_ms: int, statement_ms: int
) -> None:
    cfg = settings()
    context = FakeContext(remaining_ms=remaining_ms)
    budget = Budget(context, cfg.retention_deadline_margin_ms)
    assert budget.remaining_ms() == remaining_ms - margin_ms
    assert budget.margin_ms is not None  # fixed at the first look, above
    limits = run_limits(cfg, budget.margin_ms)
    assert (limits.statement_timeout_ms, limits.lock_timeout_ms) == (statement_ms, 500)
    # With no time left at all, the closing audit entry still gets a second to commit.
    assert run_limits(cfg, 0).statement_timeout_ms == 1_000


@pytest.mark.parametrize("remaining_ms", [30_000, 60_000, 900_000])
def test_a_run_invoked_with_little_time_left_still_deletes_rows(
    sql: SQL, monkeypatch: pytest.MonkeyPatch, default_settings: None, remaining_ms: int
) -> None:
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        policies(("inbound_events", "received_at", 30, 4), ("chat_sessions", "updated_at", 90, 4)),
    )
    seed(sql, events_expired=40)
    # A virtual clock: every look at the deadline costs a twentieth of the time given.
    context = FakeContext(remaining_ms=remaining_ms, step_ms=remaining_ms // 20)

    result = run(event("retention-scheduler.json"), context)

    left = count(sql, "inbound_events", "event_type = 'expired'")
    assert left < 40, "the run deleted nothing"
    assert count(sql, "inbound_events", "event_type = 'fresh'") == 3
    (entry,) = audit_entries(sql, result["runId"], "inbound_events")
    assert entry["deleted"] == entry["rowsDeleted"] == 40 - left
    if result["status"] == "stopped":
        assert entry["stoppedBy"] == "deadline"
