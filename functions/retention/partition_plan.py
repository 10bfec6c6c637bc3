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


def _literal(text: str) -> str | None:
    """A single-column range bound's literal; None for MINVALUE/MAXVALUE."""
    text = text.strip()
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    match = _LITERAL_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a single-column bound: {text}")
    return match.group(1).replace("''", "'")


def _ranges(
    conn: pg8000.native.Connection, bounds: list[str | None]
) -> list[tuple[datetime | None, datetime | None] | None]:
    """Each partition's (lower, upper) as timestamps, or None when it has no range to read."""
    literals: list[tuple[str | None, str | None] | None] = []
    for bound in bounds:
        match = _RANGE_RE.fullmatch(bound or "")  # DEFAULT and LIST/HASH bounds do not match
        try:
            literals.append((_literal(match["lo"]), _literal(match["hi"])) if match else None)
        except ValueError:
            literals.append(None)
    texts = [t for pair in literals if pair for t in pair if t is not None]
    # The server printed the bounds in the session's DateStyle/TimeZone and reads them back
    # alike: one round trip for all of them.
    parsed = dict(
        conn.run(
            "SELECT t, CAST(t AS timestamptz) FROM unnest(CAST(:texts AS text[])) AS t",
            texts=texts,
        )
        if texts
        else []
    )
    return [
        (parsed.get(pair[0]) if pair[0] else None, parsed.get(pair[1]) if pair[1] else None)
        if pair
        else None
        for pair in literals
    ]


def _plan_into(
    conn: pg8000.native.Connection,
    parent: Relation,
    column: str,
    cutoff: datetime,
    plan: PartitionPlan,
) -> None:
    keyed = conn.run(_KEYED_BY, parent=parent.oid, column=column)
    by_column = bool(keyed and keyed[0][0])
    children = conn.run(_CHILDREN, parent=parent.oid)
    ranges = _ranges(conn, [c[4] for c in children]) if by_column else [None] * len(children)
    for (oid, schema, name, partitioned, _), bounds in zip(children, ranges, strict=True):
        child = Relation(int(oid), schema, name)
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
