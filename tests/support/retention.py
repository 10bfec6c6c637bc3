"""Helpers shared by the retention tests: a clean slate, fake Lambda contexts, audit queries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.db import SQL
from tools import ROOT
from tools.runtime.handler import LambdaContext

EVENTS = ROOT / "events"

# Small enough to exercise every deadline and lease path quickly, valid per ops.config.
FAST_SETTINGS = {
    "RETENTION_DEADLINE_MARGIN_MS": "2000",
    "RETENTION_STATEMENT_TIMEOUT_MS": "1000",
    "RETENTION_LOCK_TIMEOUT_MS": "200",
    "RETENTION_LEASE_TTL_MS": "1500",
}


def event(name: str, **overrides: Any) -> dict[str, Any]:
    return {**json.loads((EVENTS / name).read_text()), **overrides}


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so no handler code runs for it."""


class FakeContext(LambdaContext):
    """A Lambda context on a virtual clock: every look at the remaining time costs `step_ms`.

    Deadlines are then a matter of how many checks the run makes, not of how fast
    this machine is. `crash_at` raises Crash on that look instead.
    """

    def __init__(
        self,
        remaining_ms: int = 600_000,
        step_ms: int = 0,
        crash_at: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__("RetentionFunction", 900)
        self.remaining_ms = remaining_ms
        self.step_ms = step_ms
        self.crash_at = crash_at
        self.looks = 0
        if request_id:
            self.aws_request_id = request_id

    def get_remaining_time_in_millis(self) -> int:
        self.looks += 1
        if self.crash_at is not None and self.looks >= self.crash_at:
            raise Crash(f"crashed at look {self.looks}")
        self.remaining_ms -= self.step_ms
        return max(0, self.remaining_ms)


def run(evt: Any, context: FakeContext | None = None) -> dict[str, Any]:
    """The retention handler on a virtual-clock context (imported here: its init registers
    the shutdown flush, as in Lambda)."""
    from retention.app import lambda_handler

    return lambda_handler(evt, context or FakeContext())


def seed(
    sql: SQL,
    *,
    events_expired: int = 7,
    events_fresh: int = 3,
    sessions_expired: int = 4,
    sessions_fresh: int = 2,
) -> None:
    """Expired rows a day or more past their cutoff, fresh ones a day or more inside it."""
    sql(
        "INSERT INTO inbound_events (source, event_type, received_at) "
        "SELECT 'test', 'expired', now() - interval '31 days' - make_interval(mins => g) "
        "FROM generate_series(1, :n) g",
        n=events_expired,
    )
    sql(
        "INSERT INTO inbound_events (source, event_type, received_at) "
        "SELECT 'test', 'fresh', now() - interval '29 days' + make_interval(mins => g) "
        "FROM generate_series(1, :n) g",
        n=events_fresh,
    )
    sql(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) "
        "SELECT 'test', 'expired', now() - interval '91 days' - make_interval(mins => g) "
        "FROM generate_series(1, :n) g",
        n=sessions_expired,
    )
    sql(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) "
        "SELECT 'test', 'fresh', now() - interval '89 days' + make_interval(mins => g) "
        "FROM generate_series(1, :n) g",
        n=sessions_fresh,
    )


def policies(*items: tuple[str, str, int, int]) -> str:
    return json.dumps(
        [{"table": t, "column": c, "maxAgeDays": d, "batchSize": b} for t, c, d, b in items]
    )


# Audit entries outlive every test (the log is append-only) and sample events repeat run
# ids, so each test only sees the entries written after its clean slate.
_audit_floor = 0


def audit_entries(sql: SQL, run_id: str, table: str | None = None) -> list[dict[str, Any]]:
    rows = sql(
        "SELECT entity, actor_type, actor_id, action, payload FROM audit_logs "
        "WHERE id > :floor AND action = 'retention.prune' AND payload->>'runId' = :r "
        "AND (CAST(:t AS text) IS NULL OR entity = :t) ORDER BY id",
        floor=_audit_floor,
        r=run_id,
        t=table,
    )
    return [
        {"entity": e, "actor_type": at, "actor_id": ai, "action": a, **p}
        for e, at, ai, a, p in rows
    ]


def lines(log_lines: Callable[[], list[dict[str, Any]]], **match: Any) -> list[dict[str, Any]]:
    return [x for x in log_lines() if all(x.get(k) == v for k, v in match.items())]


def count(sql: SQL, table: str, where: str = "true", **params: Any) -> int:
    return int(sql(f"SELECT count(*) FROM {table} WHERE {where}", **params)[0][0])


def clean_slate(sql: SQL, monkeypatch: pytest.MonkeyPatch) -> None:
    """No rows in the policy tables, no retention history, the fast settings; audit
    entries written before now are out of `audit_entries`' sight."""
    for key, value in FAST_SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RETENTION_POLICIES", raising=False)
    global _audit_floor
    _audit_floor = int(sql("SELECT coalesce(max(id), 0) FROM audit_logs")[0][0])
    sql("TRUNCATE inbound_events, chat_sessions, retention_runs CASCADE")
    sql(
        "UPDATE retention_lease SET holder = NULL, run_key = NULL, acquired_at = NULL, "
        "expires_at = '-infinity'"
    )
