"""Which partitions of a partitioned policy table to drop whole, and which to prune row by row.

A partition of a parent range-partitioned by the policy column alone is dropped
when its upper bound is at or below the cutoff (every row it can hold is older),
skipped when its lower bound is at or above the cutoff (no row it holds is), and
otherwise pruned row by row: the boundary partition, a DEFAULT partition, and
any partition whose bounds cannot be read as timestamps. Sub-partitioned
partitions that straddle the cutoff are planned recursively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

import pg8000.native
from policy_catalog import Relation, Target

_RANGE_RE = re.compile(r"FOR VALUES FROM \((?P<lo>.+)\) TO \((?P<hi>.+)\)")
_LITERAL_RE = re.compile(r"'((?:[^']|'')*)'")

_CHILDREN = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind = 'p', pg_get_expr(c.relpartbound, c.oid)
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.inhparent = :parent
"""
# Whether the parent is range-partitioned on exactly the policy column.
_KEYED_BY = """
SELECT pt.partstrat = 'r' AND pt.partnatts = 1
       AND (SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]) = :column
  FROM pg_partitioned_table pt WHERE pt.partrelid = :parent
"""


@dataclass(frozen=True)
class PartitionDrop:
    parent: Relation
    partition: Relation
    upper: datetime


@dataclass
class PartitionPlan:
    drops: list[PartitionDrop] = field(default_factory=list)  # oldest first
    row_by_row: list[Relation] = field(default_factory=list)


def _bound(conn: pg8000.native.Connection, text: str) -> datetime | None:
    """A range bound as a timestamp; None for MINVALUE/MAXVALUE."""
    match = _LITERAL_RE.fullmatch(text.strip())
    if match is None:
        if text.strip() in ("MINVALUE", "MAXVALUE"):
            return None
        raise ValueError(f"not a single-column bound: {text}")
    # The server formats the bound in the session's DateStyle/TimeZone and parses it back alike.
    literal = match.group(1).replace("''", "'")
    value: datetime = conn.run("SELECT CAST(:v AS timestamptz)", v=literal)[0][0]
    return value


def _range(
    conn: pg8000.native.Connection, bound: str | None
) -> tuple[datetime | None, datetime | None] | None:
    match = _RANGE_RE.fullmatch(bound or "")
    if match is None:
        return None  # DEFAULT, or not a range partition
    try:
        return _bound(conn, match.group("lo")), _bound(conn, match.group("hi"))
    except ValueError:
        return None


def _plan_into(
    conn: pg8000.native.Connection,
    parent: Relation,
    column: str,
    cutoff: datetime,
    plan: PartitionPlan,
) -> None:
    keyed = conn.run(_KEYED_BY, parent=parent.oid, column=column)
    by_column = bool(keyed and keyed[0][0])
    for oid, schema, name, partitioned, bound in conn.run(_CHILDREN, parent=parent.oid):
        child = Relation(int(oid), schema, name)
        bounds = _range(conn, bound) if by_column else None
        if bounds is not None:
            lower, upper = bounds
            if upper is not None and upper <= cutoff:
                plan.drops.append(PartitionDrop(parent, child, upper))
                continue
            if lower is not None and lower >= cutoff:
                continue
        if partitioned:
            _plan_into(conn, child, column, cutoff, plan)
        else:
            plan.row_by_row.append(child)


def plan_partitions(
    conn: pg8000.native.Connection, target: Target, cutoff: datetime
) -> PartitionPlan:
    plan = PartitionPlan()
    _plan_into(conn, target.relation, target.policy.column, cutoff, plan)
    plan.drops.sort(key=lambda d: d.upper)
    return plan
