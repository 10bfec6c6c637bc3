"""Which partitions of a partitioned policy table to drop whole, and which to prune row by row.

A partition of a parent range-partitioned by the policy column alone is dropped
when its upper bound is at or below the cutoff (every row it can hold is older),
skipped when its lower bound is at or above the cutoff (no row it holds is), and
otherwise pruned row by row: the boundary partition, a DEFAULT partition, and
any partition whose bounds cannot be read as timestamps. Sub-partitioned
partitions that straddle the cutoff are planned recursively.

The server compares the bounds with the cutoff, both cast to the column's type (as the
batches compare rows), so that `-infinity`, BC or far-future bounds compare like any other.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pg8000.native

from ops.timestamps import PgTimestamp
from retention.model import PartitionDrop, PartitionPlan, Relation, Target

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


# Each bound literal: how it compares with the cutoff (-1, 0, 1), and its epoch (an order).
_VERSUS_CUTOFF = """
SELECT t, CASE WHEN v < c THEN -1 WHEN v > c THEN 1 ELSE 0 END, extract(epoch FROM v)
  FROM (SELECT t, CAST(t AS {type}) AS v, CAST(:cutoff AS {type}) AS c
          FROM unnest(CAST(:texts AS text[])) AS t) AS b
"""


def _literal(text: str) -> str | None:
    """A single-column range bound's literal; None for MINVALUE/MAXVALUE."""
    text = text.strip()
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    match = _LITERAL_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a single-column bound: {text}")
    return match.group(1).replace("''", "'")


Versus = tuple[int, Decimal]  # a bound versus the cutoff (-1, 0, 1), and its epoch


def _ranges(
    conn: pg8000.native.Connection, bounds: list[str | None], sql_type: str, cutoff: PgTimestamp
) -> list[tuple[Versus | None, Versus | None] | None]:
    """Each partition's (lower, upper) versus the cutoff, None for MINVALUE/MAXVALUE; None
    when it has no range to read."""
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
    parsed: dict[str, Versus] = {
        t: (int(side), Decimal(epoch))
        for t, side, epoch in (
            conn.run(_VERSUS_CUTOFF.format(type=sql_type), texts=texts, cutoff=cutoff)
            if texts
            else []
        )
    }
    return [
        (parsed.get(pair[0]) if pair[0] else None, parsed.get(pair[1]) if pair[1] else None)
        if pair
        else None
        for pair in literals
    ]


def _plan_into(
    conn: pg8000.native.Connection,
    parent: Relation,
    target: Target,
    cutoff: PgTimestamp,
    plan: PartitionPlan,
) -> None:
    keyed = conn.run(_KEYED_BY, parent=parent.oid, column=target.policy.column)
    by_column = bool(keyed and keyed[0][0])
    children = conn.run(_CHILDREN, parent=parent.oid)
    ranges: list[tuple[Versus | None, Versus | None] | None] = (
        _ranges(conn, [c[4] for c in children], target.sql_type, cutoff)
        if by_column
        else [None] * len(children)
    )
    for (oid, schema, name, partitioned, _), bounds in zip(children, ranges, strict=True):
        child = Relation(int(oid), schema, name)
        if bounds is not None:
            lower, upper = bounds
            if upper is not None and upper[0] <= 0:  # every row it can hold is older
                plan.drops.append(PartitionDrop(parent, child, upper[1]))
                continue
            if lower is not None and lower[0] >= 0:  # no row it can hold is older
                continue
        if partitioned:
            _plan_into(conn, child, target, cutoff, plan)
        else:
            plan.row_by_row.append(child)


def plan_partitions(
    conn: pg8000.native.Connection, target: Target, cutoff: PgTimestamp
) -> PartitionPlan:
    """`cutoff` is a value of the column's type (pruning.column_cutoff)."""
    plan = PartitionPlan()
    _plan_into(conn, target.relation, target, cutoff, plan)
    plan.drops.sort(key=lambda d: d.upper)
    return plan
