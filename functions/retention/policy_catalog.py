"""Policies checked against the database catalog before anything is deleted.

A policy passes only if its table exists as a plain or partitioned table, is not
the audit log (nor a partition of it), its column is a `timestamptz` or a `timestamp`
(any precision, or a domain over one; a `date` is refused: a day has no instant at
which it is older than a cutoff, and read as its midnight a day partly newer would
go), and deleting from it cannot cascade into another table (a foreign key with ON
DELETE CASCADE / SET NULL / SET DEFAULT would prune rows that no policy names). Every problem of
every policy is reported at once. Names used in SQL afterwards come from the
catalog and are quoted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ops.db import Database
from ops.retention_policies import AUDIT_TABLE, Policy, PolicyError
from retention.model import SQL_TYPES, Relation, Target

_LOOKUP = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text,
       format_type(a.atttypid, a.atttypmod),
       format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), NULL),
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum
                 AND i.indisvalid AND i.indpred IS NULL),
       c.oid = to_regclass(:audit)
         OR EXISTS (SELECT 1 FROM pg_partition_ancestors(c.oid) x
                     WHERE x.relid = to_regclass(:audit)),
       (SELECT string_agg(format('%s (%s)', con.conrelid::regclass, con.conname), ', ')
          FROM pg_constraint con
         WHERE con.contype = 'f' AND con.confdeltype IN ('c', 'n', 'd')
           AND (con.confrelid = c.oid
                OR con.confrelid IN (SELECT relid FROM pg_partition_tree(c.oid)))
           AND NOT (con.conrelid = c.oid
                    OR con.conrelid IN (SELECT relid FROM pg_partition_tree(c.oid))))
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a
         ON a.attrelid = c.oid AND a.attname = :column AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type t ON t.oid = a.atttypid
 WHERE c.oid = to_regclass(:table)
"""


def select_policies(policies: Sequence[Policy], tables: Iterable[str] | None) -> list[Policy]:
    """The policies an event asked for; a table that no policy names is refused."""
    if tables is None:
        return list(policies)
    by_table = {p.table: p for p in policies}
    unknown = [t for t in tables if t not in by_table]
    if unknown:
        raise PolicyError(
            f"no retention policy names {', '.join(map(repr, unknown))}; "
            f"policy tables: {', '.join(by_table)}"
        )
    return [by_table[t] for t in dict.fromkeys(tables)]


def _check(policy: Policy, row: list[Any] | None) -> tuple[Target | None, str | None]:
    where = f"policy {policy.table}.{policy.column}"
    if row is None:
        return None, f"{where}: table {policy.table} does not exist"
    oid, schema, name, relkind, declared, column_type, indexed, is_audit, cascades = row
    if is_audit:
        return None, f"{where}: {schema}.{name} is the audit log, which is never pruned"
    if relkind not in ("r", "p"):
        return None, f"{where}: {schema}.{name} is not a table (relkind {relkind})"
    if column_type is None:
        return None, f"{where}: column {policy.column} does not exist"
    if column_type not in SQL_TYPES:
        return None, (
            f"{where}: column {policy.column} of {schema}.{name} is {declared}; "
            "retention needs timestamptz or timestamp"
        )
    if cascades:
        return None, f"{where}: deleting would cascade into {cascades}, which no policy prunes"
    target = Target(
        policy=policy,
        relation=Relation(int(oid), schema, name),
        column_type=column_type,
        partitioned=relkind == "p",
        indexed=bool(indexed),
    )
    return target, None


def resolve_targets(db: Database, policies: Sequence[Policy]) -> list[Target]:
    """Catalog-checked targets in policy order; PolicyError listing every problem."""
    targets: list[Target] = []
    problems: list[str] = []
    for policy in policies:
        rows = db.run(_LOOKUP, table=policy.table, column=policy.column, audit=AUDIT_TABLE)
        target, problem = _check(policy, rows[0] if rows else None)
        if problem:
            problems.append(problem)
        elif target:
            targets.append(target)
    if problems:
        raise PolicyError("invalid retention policy: " + "; ".join(problems))
    return targets
