"""The run's inputs, checked before anything is deleted: the event and the policies.

The run key is the same for every delivery of a run (at least once) and differs between
runs: Scheduler's schedule ARN + scheduled time (its execution id changes per attempt:
logged, not keyed on); a classic scheduled event's `id`; an explicit `runId`; else the
Lambda request id (the same for Lambda's own retries). An on-failure destination record
(the dead-letter queue's) re-drives its original event.

A policy passes only if its table is a plain or partitioned table, not the audit log nor
a partition of it; its column a `timestamptz` or `timestamp` (any precision, or a domain
over one; a `date` has no instant at which it is older than a cutoff); and deleting from
it cannot cascade (ON DELETE CASCADE / SET NULL / SET DEFAULT would prune rows no policy
names). Every problem of every policy is reported at once; names used in SQL afterwards
come from the catalog and are quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ops.db import Database
from ops.log import bounded
from ops.retention_policies import AUDIT_TABLE, Policy, PolicyError
from ops.timestamps import utc_iso
from retention.model import SQL_TYPES, EventError, Relation, RunIdentity, Target, Trigger

_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


def _required_str(event: dict[str, Any], name: str, shape: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"{shape} event lacks {name!r}")
    if "<aws.scheduler." in value:
        raise EventError(
            f"{shape} event has an unsubstituted {name!r} ({bounded(value)});"
            " check the schedule's Input"
        )
    return value.strip()


def _utc_iso(value: str, name: str) -> str:
    """One spelling per instant, so `...Z` and `...+00:00` name the same run."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EventError(f"{name} is not an ISO 8601 timestamp: {bounded(repr(value))}") from None
    if parsed.tzinfo is None:
        raise EventError(f"{name} has no time zone: {bounded(repr(value))}")
    return utc_iso(parsed)


def identify(event: Any, request_id: str) -> RunIdentity:
    event = {} if event is None else event
    if isinstance(event, dict) and "requestPayload" in event and "responseContext" in event:
        event = event["requestPayload"]  # an on-failure destination record: its event
    if not isinstance(event, dict):
        raise EventError(f"the event must be a JSON object, got {type(event).__name__}")
    dry_run = event.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise EventError(f"dryRun must be true or false, got {bounded(repr(dry_run))}")

    attempt = execution = None
    if event.get("source") == "scheduler":
        arn = _required_str(event, "scheduleArn", "Scheduler")
        when = _utc_iso(_required_str(event, "scheduledTime", "Scheduler"), "scheduledTime")
        key, trigger = f"scheduler:{arn}@{when}", Trigger.SCHEDULER
        attempt = str(event.get("attemptNumber") or "") or None
        execution = str(event.get("executionId") or "") or None
    elif event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event":
        key, trigger = f"event:{_required_str(event, 'id', 'EventBridge')}", Trigger.EVENTBRIDGE
    elif "runId" in event:
        run_id = event["runId"]
        if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
            raise EventError(
                "runId must be 1-128 characters of letters, digits and ._:@/- "
                f"(starting with a letter or digit), got {bounded(repr(run_id))}"
            )
        key, trigger = f"manual:{run_id}", Trigger.MANUAL
    else:
        key, trigger = f"manual:{request_id}", Trigger.MANUAL

    tables = event.get("tables")
    if tables is not None and not (
        isinstance(tables, list) and tables and all(isinstance(t, str) for t in tables)
    ):
        raise EventError("tables must be a non-empty list of table names")
    key = f"dry-run:{key}" if dry_run else key
    tables = tuple(tables) if tables is not None else None
    return RunIdentity(key, trigger, dry_run, tables, attempt, execution)


_LOOKUP = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text, format_type(a.atttypid, a.atttypmod),
       format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), NULL),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum
                 AND i.indisvalid AND i.indpred IS NULL),
       c.oid = to_regclass(:audit) OR EXISTS (SELECT 1 FROM pg_partition_ancestors(c.oid) x
                                               WHERE x.relid = to_regclass(:audit)),
       (SELECT string_agg(format('%s (%s)', con.conrelid::regclass, con.conname), ', ')
          FROM pg_constraint con
         WHERE con.contype = 'f' AND con.confdeltype IN ('c', 'n', 'd')
           AND (con.confrelid = c.oid
                OR con.confrelid IN (SELECT relid FROM pg_partition_tree(c.oid)))
           AND NOT (con.conrelid = c.oid
                    OR con.conrelid IN (SELECT relid FROM pg_partition_tree(c.oid))))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a
         ON a.attrelid = c.oid AND a.attname = :column AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type t ON t.oid = a.atttypid
 WHERE c.oid = to_regclass(:table)"""


def select_policies(policies: Sequence[Policy], tables: Iterable[str] | None) -> list[Policy]:
    """The policies an event asked for; a table that no policy names is refused."""
    if tables is None:
        return list(policies)
    by_table = {p.table: p for p in policies}
    if unknown := [t for t in tables if t not in by_table]:
        raise PolicyError(
            f"no retention policy names {', '.join(map(repr, unknown))}; "
            f"policy tables: {', '.join(by_table)}"
        )
    return [by_table[t] for t in dict.fromkeys(tables)]


def _check(policy: Policy, row: list[Any] | None) -> Target | str:
    where = f"policy {policy.table}.{policy.column}"
    if row is None:
        return f"{where}: table {policy.table} does not exist"
    oid, schema, name, relkind, declared, column_type, indexed, is_audit, cascades = row
    if is_audit:
        return f"{where}: {schema}.{name} is the audit log, which is never pruned"
    if relkind not in ("r", "p"):
        return f"{where}: {schema}.{name} is not a table (relkind {relkind})"
    if column_type is None:
        return f"{where}: column {policy.column} does not exist"
    if column_type not in SQL_TYPES:
        return (
            f"{where}: column {policy.column} of {schema}.{name} is {declared}; "
            "retention needs timestamptz or timestamp"
        )
    if cascades:
        return f"{where}: deleting would cascade into {cascades}, which no policy prunes"
    relation = Relation(int(oid), schema, name)
    return Target(policy, relation, column_type, partitioned=relkind == "p", indexed=indexed)


def resolve_targets(db: Database, policies: Sequence[Policy]) -> list[Target]:
    """Catalog-checked targets in policy order; PolicyError listing every problem."""
    checked: list[Target | str] = []
    for p in policies:
        rows = db.run(_LOOKUP, table=p.table, column=p.column, audit=AUDIT_TABLE)
        checked.append(_check(p, rows[0] if rows else None))
    if problems := [c for c in checked if isinstance(c, str)]:
        raise PolicyError("invalid retention policy: " + "; ".join(problems))
    return [c for c in checked if isinstance(c, Target)]
