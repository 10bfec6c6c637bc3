"""One retention invocation, start to finish (`RetentionRun.execute` reads top to bottom).

Each table gets one audit entry per invocation that worked on it; a failure audits what
was done and re-raises, for Scheduler's retries and the dead-letter queue.

Time: the run stops starting work a margin before the Lambda deadline: a quarter of the
time the invocation starts with, at most RETENTION_DEADLINE_MARGIN_MS (900 s leave 870 s,
60 s leave 45 s). A statement may take a third of the margin (at most
RETENTION_STATEMENT_TIMEOUT_MS, never under 1 s), so that a batch started just before
the margin (two slow statements) and the audit entry after it end before the deadline;
lock waits get half that at most.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import pg8000.native
from pg8000.exceptions import DatabaseError

import retention.model as m
from ops.config import Settings, settings
from ops.db import Database
from ops.log import logger
from ops.retention_policies import load_policies
from ops.sql import error_fields, sqlstate
from ops.timestamps import read_timestamps_exactly, utc_iso
from retention import report
from retention.inputs import identify, resolve_targets, select_policies
from retention.ledger import RunLedger
from retention.pruning import LOCK_CONFLICTS, TablePruner, survey, transaction

LEASE_POLL_S = 0.5
ERROR_TEXT_LIMIT = 500
MARGIN_SHARE = 4  # the margin is this fraction (1/4) of the time left at the start
# With almost no time left, the closing audit entry must still be able to commit.
MIN_STATEMENT_TIMEOUT_MS = 1_000
SKIPPED = {
    m.SkipReason.DUPLICATE: "this run already completed; nothing to do",
    m.SkipReason.IN_PROGRESS: "this run is in progress in another invocation",
    m.SkipReason.BUSY: "another retention run holds the lease; skipped",
}


class JobDatabase(Database):
    """Timestamps read exactly (ops.timestamps) and printed in ISO whatever DateStyle the
    database sets: other styles print zone abbreviations, which PostgreSQL reads back by
    its own table (15 reads `IST` as Israel's), so a cutoff sent back moved by hours.
    Session state, on purpose: PgBouncer keeps DateStyle per client; RDS Proxy pins."""

    def _connect(self, *, timeout_s: float | None = None) -> pg8000.native.Connection:
        conn = super()._connect(timeout_s=timeout_s)
        try:
            conn.run("SET DateStyle = ISO")
        except BaseException:
            conn.close()
            raise
        read_timestamps_exactly(conn)
        return conn


def job_database(cfg: Settings) -> Database:
    """Timeouts sized for batches: the server cancels a slow statement (a clean error the
    run adapts to) before the socket gives up."""
    return JobDatabase(
        application_name=f"{cfg.service}-retention",
        socket_timeout_s=cfg.retention_statement_timeout_ms / 1000 + cfg.db_connect_timeout_s,
        statement_timeout_ms=cfg.retention_statement_timeout_ms,
    )


@dataclass(eq=False)
class Budget:
    """Time left before the margin ahead of the Lambda deadline. The margin is fixed at the
    first look: a quarter of the time left then, at most `cap_ms`."""

    context: Any
    cap_ms: int
    margin_ms: int | None = None

    def remaining_ms(self) -> int:
        left = int(self.context.get_remaining_time_in_millis())
        if self.margin_ms is None:
            self.margin_ms = min(self.cap_ms, left // MARGIN_SHARE)
        return left - self.margin_ms

    def has_time(self) -> bool:
        return self.remaining_ms() > 0


def run_limits(cfg: Settings, margin_ms: int) -> m.Limits:
    """Timeouts that fit the margin: a batch started just before it (two statements at
    their timeout) and the audit entry after it (one) end before the deadline."""
    statement = min(
        cfg.retention_statement_timeout_ms, max(MIN_STATEMENT_TIMEOUT_MS, margin_ms // 3)
    )
    return m.Limits(
        lock_timeout_ms=max(1, min(cfg.retention_lock_timeout_ms, statement // 2)),
        statement_timeout_ms=statement,
        batch_target_ms=min(cfg.retention_batch_target_ms, statement),
    )


def describe_error(exc: BaseException) -> str:
    """One line, no parameters or connection details (pg8000 errors are dicts)."""
    if fields := error_fields(exc):
        return f"{fields.get('C', '')}: {fields.get('M', '')}"[:ERROR_TEXT_LIMIT]
    return f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]


JobStatus = Literal["started", "waiting", "skipped", "completed", "failed"]


def _job_log(status: JobStatus, message: str, **fields: Any) -> None:
    # `name` is a reserved LogRecord attribute, so it cannot travel in `extra`.
    logger.thread_safe_append_keys(name="retention")
    try:
        extra = {"type": "job", "status": status, **fields}
        (logger.exception if status == "failed" else logger.info)(message, extra=extra)
    finally:
        logger.thread_safe_remove_keys(["name"])


def _warn(message: str, warning: str, **fields: Any) -> None:
    logger.warning(message, extra={"type": "retention_warning", "warning": warning, **fields})


@dataclass(eq=False)
class TableRecorder:
    """Books one table's units of work (a StepRecorder); the final one carries the audit."""

    ledger: RunLedger
    table: str
    budget: Budget
    began: float = field(default_factory=time.monotonic)
    skips: m.Skips = field(default_factory=m.Skips)  # what the pruner could not lock
    outcome: m.TableOutcome | None = None

    def exit(self, done: bool, found: m.Survey | None = None) -> m.TableExit:
        locked = not done and self.skips and self.budget.has_time()
        return m.TableExit(
            completed=done,
            duration_ms=round((time.monotonic() - self.began) * 1000),
            stopped_by=None if done else m.StopReason.LOCKED if locked else m.StopReason.DEADLINE,
            partitions_skipped=tuple(self.skips.partitions),
            relations_skipped=tuple(self.skips.relations),
            survey=found,
        )

    def fence(self, conn: pg8000.native.Connection) -> None:
        self.ledger.fence(conn)

    def record(self, conn: pg8000.native.Connection, step: m.Step) -> None:
        self.ledger.record(conn, self.table, step)
        if step.final:
            self.outcome = self.ledger.audit(conn, self.table, self.exit(step.done))


class RetentionRun:
    def __init__(self, db: Database, identity: m.RunIdentity, cfg: Settings, context: Any):
        self.db = db
        self.identity = identity
        self.cfg = cfg
        self.budget = Budget(context, cfg.retention_deadline_margin_ms)
        self.ledger = RunLedger(
            db, identity, cfg.retention_lease_ttl_ms, cfg.retention_lock_timeout_ms
        )
        self.outcomes: dict[str, m.TableOutcome] = {}

    def execute(self) -> dict[str, Any]:
        targets = resolve_targets(self.db, select_policies(load_policies(), self.identity.tables))
        for target in targets:
            report.flag_missing_index(target.table, not target.indexed)
            if not target.indexed:
                table, column = target.table, target.policy.column
                message = f"{table} has no index on {column}: every retention batch scans the table"
                _warn(message, "missing_index", table=table, column=column)
        start = self._acquire(targets)  # its first look at the deadline fixes the margin
        self.limits = run_limits(self.cfg, self.budget.margin_ms or 0)
        if start.skipped is not None:
            held = {"heldBy": start.held_by, "heldUntil": utc_iso(start.held_until)}
            key, reason = self.ledger.run_key, start.skipped
            _job_log("skipped", SKIPPED[reason], runId=key, reason=reason, **held)
            return {
                **self._response(m.RunStatus.SKIPPED),
                "reason": reason,
                "heldBy": start.held_by,
            }
        started = time.monotonic()
        try:
            self._audit_crashed_runs(targets)
            for target in targets:
                self._table(target, start.tables[target.table], start.attempt)
        except Exception as exc:
            self._fail(targets, exc)
            raise
        done = all(o.exit.completed for o in self.outcomes.values())
        status = m.RunStatus.COMPLETED if done else m.RunStatus.STOPPED
        self.ledger.finish(status)
        report.count_rows_deleted(self.outcomes.values())
        _job_log(
            "completed",
            "retention run completed" if done else "retention run stopped at the deadline",
            runId=self.ledger.run_key,
            attempt=start.attempt,
            dryRun=self.identity.dry_run,
            allTablesCompleted=done,
            rowsDeleted=sum(o.rows_deleted for o in self.outcomes.values()),
            durationMs=round((time.monotonic() - started) * 1000),
        )
        return self._response(status, attempt=start.attempt)

    def _acquire(self, targets: list[m.Target]) -> m.RunStart:
        """Take the lease; wait for a live holder long enough to outlive a crashed one's lease."""
        ages = {t.table: t.policy.max_age_days for t in targets}
        lease_wait_ms = self.cfg.retention_lease_ttl_ms + 2_000
        wait_s = min(lease_wait_ms, max(0, self.budget.remaining_ms())) / 1000
        wait_until = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                start = self.ledger.try_start(ages)
            except DatabaseError as exc:
                if sqlstate(exc) not in LOCK_CONFLICTS:
                    raise
                start = m.RunStart(m.SkipReason.BUSY)  # the holder is mid-transaction on it
            busy = start.skipped in (m.SkipReason.BUSY, m.SkipReason.IN_PROGRESS)
            if not busy or time.monotonic() >= wait_until:
                return start
            if not announced:
                announced = True
                _job_log(
                    "waiting",
                    "another retention run holds the lease; waiting",
                    runId=self.ledger.run_key,
                    heldBy=start.held_by,
                    heldUntil=utc_iso(start.held_until),
                    waitS=round(wait_s, 1),
                )
            time.sleep(max(0.01, min(LEASE_POLL_S, wait_until - time.monotonic())))

    def _table(self, target: m.Target, state: m.TableState, attempt: int) -> None:
        recorder = TableRecorder(self.ledger, target.table, self.budget)
        if state.completed:  # finished and audited by an earlier attempt of this run
            outcome = m.TableOutcome(
                table=state.table,
                run_id=self.ledger.run_key,
                trigger=self.identity.trigger,
                attempt=attempt,
                dry_run=self.identity.dry_run,
                cutoff=state.cutoff,
                exit=m.TableExit(completed=True, duration_ms=0),
                already_completed=True,
            )
        elif not self.budget.has_time():
            outcome = self._audit_alone(target.table, recorder.exit(done=False))
        elif self.identity.dry_run:
            # Counting may take longer than a batch: the time left, which the socket outwaits.
            timeout_ms = max(self.limits.statement_timeout_ms, self.budget.remaining_ms())
            with transaction(self.db, self.limits, timeout_ms) as conn:
                self.ledger.fence(conn, ttl_ms=timeout_ms + self.cfg.retention_lease_ttl_ms)
                found = survey(conn, target, state.cutoff)
                outcome = self.ledger.audit(conn, target.table, recorder.exit(True, found))
        else:
            keep_going = self.budget.has_time
            pruner = TablePruner(
                self.db, target, state.cutoff, self.limits, keep_going, recorder, recorder.skips
            )
            done = pruner.run()
            # No unit committed (nothing to delete, or out of time before the first): audit alone.
            outcome = recorder.outcome or self._audit_alone(target.table, recorder.exit(done))
        self._done(outcome)

    def _audit_alone(
        self, table: str, table_exit: m.TableExit, run_key: str | None = None
    ) -> m.TableOutcome:
        with transaction(self.db, self.limits) as conn:
            self.ledger.fence(conn)
            return self.ledger.audit(conn, table, table_exit, run_key=run_key)

    def _audit_crashed_runs(self, targets: list[m.Target]) -> None:
        """Deletes a crashed attempt committed but never audited: audit them now, once."""
        tables = [t.table for t in targets]
        for run_key, table, completed in self.ledger.unaudited_elsewhere(tables):
            crash = m.StopReason.CRASH
            table_exit = m.TableExit(completed, None, crash, recovered_by=self.ledger.run_key)
            outcome = self._audit_alone(table, table_exit, run_key=run_key)
            message = f"audited what run {run_key} deleted from {table} before it crashed"
            _warn(message, "recovered_audit", **report.audit_payload(outcome))

    def _done(self, outcome: m.TableOutcome) -> None:
        self.outcomes[outcome.table] = outcome
        logger.info(f"retention {outcome.table}", extra=report.log_fields(outcome))

    def _fail(self, targets: list[m.Target], exc: Exception) -> None:
        """Audit every table this invocation has not audited yet, then close the run as failed."""
        error = describe_error(exc)
        failed = m.TableExit(False, None, m.StopReason.ERROR, error=error)
        try:
            for target in targets:
                if target.table not in self.outcomes:
                    self._done(self._audit_alone(target.table, failed))
            self.ledger.finish(m.RunStatus.FAILED, error)
        except Exception as audit_exc:  # database gone: the next run audits the remainder
            logger.error(
                "could not audit the failed retention run; the next run will",
                extra={"type": "retention_warning", "error": describe_error(audit_exc)},
            )
        report.count_rows_deleted(self.outcomes.values())

    def _response(self, status: m.RunStatus, attempt: int | None = None) -> dict[str, Any]:
        return {
            "status": status.value,
            "runId": self.ledger.run_key,
            "dryRun": self.identity.dry_run,
            "attempt": attempt,
            "tables": [report.response_entry(o) for o in self.outcomes.values()],
        }


def run_retention(event: Any, context: Any, db: Database | None = None) -> dict[str, Any]:
    """Raises on failure (after logging it); without `db`, on a connection of its own."""
    began = time.monotonic()
    identity: m.RunIdentity | None = None
    own: Database | None = None
    try:
        identity = identify(event, getattr(context, "aws_request_id", "") or "local")
        _job_log(
            "started",
            "retention run started",
            runId=identity.key,
            trigger=identity.trigger,
            dryRun=identity.dry_run,
            attemptNumber=identity.attempt_number,
            executionId=identity.execution_id,
        )
        cfg = settings()
        if db is None:
            db = own = job_database(cfg)
        result = RetentionRun(db, identity, cfg, context).execute()
    except Exception as exc:
        report.count_run(succeeded=False, seconds=time.monotonic() - began)
        _job_log(
            "failed",
            "retention run failed",
            runId=identity.key if identity else None,
            error=describe_error(exc),
            errorType=type(exc).__name__,
            durationMs=round((time.monotonic() - began) * 1000),
        )
        raise
    finally:
        if own is not None:
            own.close()
    if result["status"] != m.RunStatus.SKIPPED:
        report.count_run(succeeded=True, seconds=time.monotonic() - began)
    return result
