"""The run's bookkeeping in PostgreSQL: lease, run row, per-table progress, audit entries.

- Lease (`retention_lease`, one row): who may work now. Renewed inside every unit of work,
  where the renewal is also the fence (a holder whose lease was taken over gets no row back
  and rolls back). No session-level advisory lock: nothing pins a connection behind RDS Proxy.
- Run (`retention_runs`): a completed run is never run again; a stopped, failed or crashed
  one is resumed by its next delivery.
- Progress (`retention_run_tables`): the cutoff, fixed when the run first starts; counts
  updated in the same transaction as the deletes they count.
- Audit (`audit_logs`): each entry reports the progress not yet audited and marks it audited
  in its transaction, under the progress row's lock: never audited twice nor left out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager

import pg8000.native

import retention.model as m
from ops.db import Database
from retention.report import audit_payload

_LEASE = """
SELECT holder, run_key, expires_at, expires_at > clock_timestamp()
  FROM retention_lease WHERE singleton FOR UPDATE"""
_TAKE_LEASE = """
UPDATE retention_lease SET holder = :h, run_key = :k, acquired_at = clock_timestamp(),
       expires_at = clock_timestamp() + make_interval(secs => :ttl / 1000.0)
 WHERE singleton"""
_OPEN_RUN = """
INSERT INTO retention_runs (run_key, trigger, dry_run, status)
VALUES (:k, :trigger, :dry, 'running')
    ON CONFLICT (run_key) DO UPDATE SET status = 'running', attempts = retention_runs.attempts + 1,
       attempt_started_at = clock_timestamp(), finished_at = NULL, last_error = NULL
RETURNING attempts"""
# Cutoffs from the database clock, once per run: a resumed run keeps its own. Days of 24
# hours: `interval '1 day'` would follow the session TimeZone's DST.
_OPEN_TABLES = """
INSERT INTO retention_run_tables (run_key, table_name, cutoff)
SELECT :k, t.name, now() - t.days * interval '24 hours'
  FROM unnest(CAST(:names AS text[]), CAST(:days AS int[])) AS t(name, days)
    ON CONFLICT (run_key, table_name) DO NOTHING"""
_TABLES = """
SELECT table_name, cutoff, completed FROM retention_run_tables
 WHERE run_key = :k AND table_name = ANY(CAST(:names AS text[]))"""
_FINISH = """
UPDATE retention_runs SET status = :s, finished_at = clock_timestamp(), last_error = :e
 WHERE run_key = :k"""
_RELEASE = """
UPDATE retention_lease SET holder = NULL, run_key = NULL, expires_at = '-infinity'
 WHERE singleton AND holder = :h"""
_RENEW = """
UPDATE retention_lease SET expires_at = clock_timestamp() + make_interval(secs => :ttl / 1000.0)
 WHERE singleton AND holder = :h RETURNING 1"""
_RECORD = f"""
WITH lease AS ({_RENEW})
UPDATE retention_run_tables SET rows_deleted = rows_deleted + :rows, batches = batches + :batches,
       partitions_dropped = partitions_dropped || CAST(:parts AS text[]),
       partition_rows = partition_rows || CAST(:part_rows AS bigint[]),
       completed = completed OR :done, updated_at = now()
 WHERE run_key = :k AND table_name = :t AND EXISTS (SELECT 1 FROM lease)
RETURNING 1"""
_UNAUDITED = """
SELECT r.trigger, r.attempts, r.dry_run, t.cutoff, t.rows_deleted, t.batches,
       t.partitions_dropped, t.partition_rows,
       t.audited_rows, t.audited_batches, t.audited_partitions
  FROM retention_run_tables t JOIN retention_runs r USING (run_key)
 WHERE t.run_key = :k AND t.table_name = :t FOR UPDATE OF t"""
_AUDIT = """
INSERT INTO audit_logs (actor_type, actor_id, action, entity, payload)
VALUES ('system', 'retention-job', 'retention.prune', :entity, CAST(:payload AS jsonb))"""
_AUDITED = """
UPDATE retention_run_tables SET audited_rows = rows_deleted, audited_batches = batches,
       audited_partitions = cardinality(partitions_dropped),
       completed = completed OR :done, updated_at = now()
 WHERE run_key = :k AND table_name = :t"""
_CRASHED = """
SELECT run_key, table_name, completed FROM retention_run_tables
 WHERE (rows_deleted > audited_rows OR batches > audited_batches
        OR cardinality(partitions_dropped) > audited_partitions)
   AND NOT (run_key = :k AND table_name = ANY(CAST(:names AS text[])))
 ORDER BY run_key, table_name"""


class RunLedger:
    def __init__(
        self, db: Database, identity: m.RunIdentity, lease_ttl_ms: int, lock_timeout_ms: int
    ) -> None:
        self.db = db
        self.identity = identity
        self.run_key = identity.key
        self.holder = uuid.uuid4().hex  # per attempt: a retry must not inherit a dead lease
        self.lease_ttl_ms = lease_ttl_ms
        self.lock_timeout_ms = lock_timeout_ms

    def _short_transaction(self) -> AbstractContextManager[pg8000.native.Connection]:
        timeout = self.lock_timeout_ms
        return self.db.transaction(statement_timeout_ms=timeout + 5_000, lock_timeout_ms=timeout)

    def try_start(self, max_age_days: dict[str, int]) -> m.RunStart:
        """Take the lease and open (or resume) the run, fixing each table's cutoff once."""
        key, names = self.run_key, list(max_age_days)
        with self._short_transaction() as conn:
            ((held_by, held_key, held_until, live),) = conn.run(_LEASE)
            run = conn.run("SELECT status FROM retention_runs WHERE run_key = :k", k=key)
            if run and run[0][0] == "completed":
                return m.RunStart(m.SkipReason.DUPLICATE)
            if live and held_by != self.holder:
                reason = m.SkipReason.IN_PROGRESS if held_key == key else m.SkipReason.BUSY
                return m.RunStart(reason, held_by=held_key, held_until=held_until)
            conn.run(_TAKE_LEASE, h=self.holder, k=key, ttl=self.lease_ttl_ms)
            trigger, dry = self.identity.trigger, self.identity.dry_run
            ((attempt,),) = conn.run(_OPEN_RUN, k=key, trigger=trigger, dry=dry)
            conn.run(_OPEN_TABLES, k=key, names=names, days=list(max_age_days.values()))
            rows = conn.run(_TABLES, k=key, names=names)
        tables = {r[0]: m.TableState(r[0], r[1], bool(r[2])) for r in rows}
        return m.RunStart(None, attempt=int(attempt), tables=tables)

    def finish(self, status: m.RunStatus, error: str | None = None) -> None:
        """Close this attempt and release the lease, unless the lease was lost meanwhile."""
        with self._short_transaction() as conn:
            if self._holds(conn):
                conn.run(_FINISH, s=status.value, e=error, k=self.run_key)
                conn.run(_RELEASE, h=self.holder)

    def _holds(self, conn: pg8000.native.Connection, ttl_ms: int | None = None) -> bool:
        # holder = us is the whole test: expiry only tells others they may take over.
        return bool(conn.run(_RENEW, h=self.holder, ttl=ttl_ms or self.lease_ttl_ms))

    def fence(self, conn: pg8000.native.Connection, ttl_ms: int | None = None) -> None:
        """Renew the lease in this transaction; LeaseLost if another run holds it now."""
        if not self._holds(conn, ttl_ms):
            raise m.LeaseLost(f"run {self.run_key} lost the retention lease to another run")

    def record(self, conn: pg8000.native.Connection, table: str, step: m.Step) -> None:
        """Progress in the work's transaction, fenced by the lease renewal (one round trip)."""
        parts = [step.partition] if step.partition else []
        part_rows = [step.partition_rows] if step.partition else []
        lease = {"h": self.holder, "ttl": self.lease_ttl_ms}
        counts = {"rows": step.rows, "batches": step.batches, "done": step.done}
        if not conn.run(
            _RECORD, **lease, **counts, parts=parts, part_rows=part_rows, k=self.run_key, t=table
        ):
            raise m.LeaseLost(f"run {self.run_key} lost the retention lease to another run")

    def audit(
        self,
        conn: pg8000.native.Connection,
        table: str,
        table_exit: m.TableExit,
        run_key: str | None = None,
    ) -> m.TableOutcome:
        """Write the audit entry for everything not yet audited; returns its outcome."""
        run_key = run_key or self.run_key
        (row,) = conn.run(_UNAUDITED, k=run_key, t=table)
        trigger, attempt, dry_run, cutoff, rows, batches, parts, part_rows, *audited = row
        outcome = m.TableOutcome(
            *(table, run_key, m.Trigger(trigger), attempt, dry_run, cutoff, table_exit),
            rows_deleted=int(rows - audited[0]),
            batches=int(batches - audited[1]),
            partitions_dropped=tuple(parts[audited[2] :]),
            partition_rows_estimate=int(sum(part_rows[audited[2] :])),
        )
        payload = json.dumps(audit_payload(outcome), default=str)
        conn.run(_AUDIT, entity=table, payload=payload)
        conn.run(_AUDITED, done=table_exit.completed, k=run_key, t=table)
        return outcome

    def unaudited_elsewhere(self, tables: Sequence[str]) -> list[tuple[str, str, bool]]:
        """Progress that crashed runs left unaudited (run key, table, completed)."""
        rows = self.db.run(_CRASHED, k=self.run_key, names=list(tables))
        return [(r[0], r[1], bool(r[2])) for r in rows]
