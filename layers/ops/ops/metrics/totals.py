"""Reading the totals for /metrics, and folding idle spill rows to keep that cheap.

A counter lives in one total row per series (shard 0), plus spill rows where
flushes collided on the total (migrations/005_metrics_totals.sql), so a scrape
sums about one row per series; the compaction folds spill rows once they are idle.

The sums over shards come back as one packed "id value id value ..." string
(pg8000 parses rows in Python: one row is far cheaper than thousands), the
series' names from a per-container cache: series are only ever added, so a warm
metrics container fetches just the new ones at each scrape. A gauge is its
newest reading across shards, not a sum.

A counter's label set younger than the hold (METRICS_NEW_SERIES_HOLD_S, from
metric_series.created_at, by the database clock) is read as 0: Prometheus then
sees the new series at 0 before its value, and rate()/increase() count its first
counts (a series that first appears with value N counts as 0 there). Counts that
arrived while the store could not be read (an outage) would otherwise vanish
from every rate.

The shapes of the families teams declared in their own functions (migrations/009:
metric_families, written by their flushes) are cached per metrics container too,
fetched again only when the table changed (its newest declaration and row count
come back with the sums). A metrics container's first read reserves the catalogue's
names there (metrics_reserve), so that a team's flush cannot take one with another shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from ops.db import Database
from ops.metrics.families import (
    COUNTER,
    GAUGE,
    REGISTRY,
    Counter,
    Family,
    Gauge,
    Histogram,
    shape_rows,
)
from ops.sql import quote_literal, set_local_timeouts

COMPACT_IDLE_S = 300  # a spill row untouched this long is folded into its total
COMPACT_EVERY_S = 60.0
COMPACT_TIMEOUT_MS = 2000
PRUNE_BATCH = 10_000  # stale cursor rows deleted per statement (migrations/004)
PRUNE_BUDGET_S = 0.2  # per compaction: more batches while there is time

VALUES_SQL = """
SELECT 'sum', string_agg(series_id::text || ' ' || value::text, ' '),
       (SELECT coalesce(max(id), 0) FROM metric_series)
FROM (SELECT series_id, sum(value) AS value FROM metric_values GROUP BY series_id) AS t
UNION ALL
SELECT 'latest', string_agg(s.id::text || ' ' || g.value::text, ' '), 0
FROM metric_series AS s
CROSS JOIN LATERAL (
    SELECT v.value FROM metric_values AS v
    WHERE v.series_id = s.id ORDER BY v.updated_at DESC LIMIT 1) AS g
WHERE s.kind = 'g'
UNION ALL
SELECT 'now', extract(epoch FROM now())::text, 0
UNION ALL
SELECT 'families', coalesce(max(extract(epoch FROM declared_at))::text, ''), count(*)
FROM metric_families
"""
# The teams' families (declared_by '' is the catalogue's: this process renders its own).
FAMILIES_SQL = (
    "SELECT family, kind, help, labels, buckets FROM metric_families"
    " WHERE declared_by <> '' ORDER BY family"
)

# Folds idle spill rows (a counter's rows outside shard 0, written when a flush
# found the series' total row held by another: migrations/005) into the totals,
# in one transaction: every snapshot sees the same sums before and after. It never
# waits on a row lock: rows being written, and totals being written, are skipped
# (SKIP LOCKED) until next time, so it cannot deadlock with flushes, which wait
# only for their own shard's rows. The first statement creates the totals that
# spilled series lack (so that their next flushes find one); like a flush, it waits
# only on another transaction's insert of the same row.
COMPACT_SQL = """
{timeouts};
INSERT INTO metric_values (series_id, shard, value, updated_at)
SELECT DISTINCT v.series_id, 0, 0::float8, now() FROM metric_values AS v
JOIN metric_series AS s ON s.id = v.series_id AND s.kind = 'c'
WHERE v.shard <> 0
  AND NOT EXISTS (SELECT 1 FROM metric_values AS t WHERE t.series_id = v.series_id AND t.shard = 0)
ORDER BY 1
ON CONFLICT (series_id, shard) DO NOTHING;
WITH idle AS (
    SELECT v.series_id, v.shard FROM metric_values AS v
    JOIN metric_series AS s ON s.id = v.series_id AND s.kind = 'c'
    WHERE v.shard <> 0 AND v.updated_at < now() - make_interval(secs => {idle_s})
    FOR UPDATE OF v SKIP LOCKED
), free AS (
    SELECT t.series_id FROM metric_values AS t
    WHERE t.shard = 0 AND t.series_id IN (SELECT series_id FROM idle)
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM metric_values AS v USING idle
    WHERE v.series_id = idle.series_id AND v.shard = idle.shard
      AND idle.series_id IN (SELECT series_id FROM free)
    RETURNING v.series_id, v.value, v.updated_at
)
UPDATE metric_values AS t
SET value = t.value + m.value, updated_at = greatest(t.updated_at, m.updated_at)
FROM (
    SELECT series_id, sum(value) AS value, max(updated_at) AS updated_at
    FROM moved GROUP BY series_id
) AS m
WHERE t.shard = 0 AND t.series_id = m.series_id
"""


class TotalRow(NamedTuple):
    """A label set's stored values, read back for the exposition."""

    labels: str  # rendered, as in SeriesKey
    values: dict[str, float]  # part (as in SeriesKey) -> its total


Totals = dict[str, list[TotalRow]]  # family -> its label sets, sorted
# family -> [(rendered labels, [(part, series id)])], label sets sorted
Layout = dict[str, list[tuple[str, list[tuple[str, int]]]]]


class SeriesNames:
    """Where each stored series goes in the exposition, by id."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.max_id = 0
        self._tree: dict[str, dict[str, list[tuple[str, int]]]] = {}
        # (family, labels) of counters -> when its first part was created (Unix seconds)
        self.born: dict[tuple[str, str], float] = {}
        self._layout: Layout | None = None

    def refresh(self, db: Database, also: Iterable[int] = ()) -> None:
        """Fetch the series above the highest id known, and `also` these: ids are handed
        out in order but committed in any order, so a lower one can appear later."""
        extra = ", ".join(str(int(i)) for i in also)
        rows = db.run(
            "SELECT id, family, labels, part, kind, extract(epoch FROM created_at)::float8"
            f" FROM metric_series WHERE id > {int(self.max_id)}"
            + (f" OR id IN ({extra})" if extra else "")
        )
        for series_id, family, labels, part, kind, created in rows:
            if series_id not in self.ids:
                self.ids.add(series_id)
                self._tree.setdefault(family, {}).setdefault(labels, []).append((part, series_id))
                self.max_id = max(self.max_id, series_id)
                self._layout = None
                if kind == "c":
                    key = (family, labels)
                    self.born[key] = min(created, self.born.get(key, created))

    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = {f: sorted(sets.items()) for f, sets in self._tree.items()}
        return self._layout


class StoredFamilies:
    """The team families' shapes, as their functions declared them (metric_families)."""

    def __init__(self) -> None:
        self.version: tuple[str, int] | None = None
        self.families: list[Family[Any]] = []
        self.reserved = False

    def refresh(self, db: Database, version: tuple[str, int]) -> None:
        if not self.reserved:  # once per metrics container: the catalogue's names are taken
            catalogue = shape_rows(f for f in REGISTRY.values() if not f.team)
            payload = json.dumps(catalogue, separators=(",", ":"), ensure_ascii=False)
            db.run(f"SELECT metrics_reserve({quote_literal(payload)}::json)")
            self.reserved = True
        if version != self.version:
            self.families = [_family(*row) for row in db.run(FAMILIES_SQL)]
            self.version = version


def _family(
    name: str, kind: str, help_text: str, labels: list[str], buckets: list[float]
) -> Family[Any]:
    family: Family[Any]
    if kind == COUNTER:
        family = Counter(name, help_text, labels, registry=None)
    elif kind == GAUGE:
        family = Gauge(name, help_text, labels, registry=None)
    else:
        family = Histogram(name, help_text, labels, buckets=buckets, registry=None)
    return family


_names = SeriesNames()
_stored = StoredFamilies()
_last_compaction = float("-inf")


def stored_families() -> list[Family[Any]]:
    """The team families' shapes read by the last scrape (none before the first)."""
    return _stored.families


def reset() -> None:
    """A new metrics container (tests)."""
    global _names, _stored, _last_compaction
    _names = SeriesNames()
    _stored = StoredFamilies()
    _last_compaction = float("-inf")


def _unpack(packed: str | None) -> dict[int, float]:
    if not packed:
        return {}
    tokens = packed.split(" ")
    return dict(zip(map(int, tokens[0::2]), map(float, tokens[1::2]), strict=True))


def read_totals(db: Database, hold_s: float = 0.0) -> Totals:
    """Every stored series summed over shards, grouped by family and label set; counters
    created less than `hold_s` seconds ago read as 0 (see the module's docstring)."""
    global _names
    rows = {kind: (packed, max_id) for kind, packed, max_id in db.run(VALUES_SQL)}
    _stored.refresh(db, rows["families"])
    held_after = float(rows["now"][0]) - hold_s if hold_s > 0 else float("inf")
    packed_sums, newest_id = rows["sum"]
    values = _unpack(packed_sums)
    values.update(_unpack(rows["latest"][0]))  # a gauge is its newest reading, not a sum
    if newest_id < _names.max_id:  # ids restarted (the tables were reset): start over
        _names = SeriesNames()
    unknown = values.keys() - _names.ids
    if unknown or newest_id > _names.max_id:
        _names.refresh(db, unknown)
    born = _names.born
    totals: Totals = {}
    for family, sets in _names.layout().items():
        present: list[TotalRow] = []
        for labels, parts in sets:
            read = {part: values[i] for part, i in parts if i in values}
            if read:
                if born.get((family, labels), held_after) > held_after:
                    read = dict.fromkeys(read, 0.0)
                present.append(TotalRow(labels, read))
        if present:
            totals[family] = present
    return totals


def compact(db: Database, idle_s: int = COMPACT_IDLE_S) -> None:
    """Fold idle spill rows into the totals (shard 0): a write, but no sum changes; then
    delete stale flush cursors in bounded batches (housekeeping kept off the flush path)."""
    db.run(
        COMPACT_SQL.format(
            timeouts=set_local_timeouts(statement_timeout_ms=COMPACT_TIMEOUT_MS), idle_s=int(idle_s)
        )
    )
    prune_cursors(db)


def prune_cursors(db: Database, budget_s: float = PRUNE_BUDGET_S) -> int:
    """Delete cursors of containers gone for a day, PRUNE_BATCH rows per statement."""
    started, deleted = time.monotonic(), 0
    while True:
        ((count,),) = db.run(
            f"{set_local_timeouts(statement_timeout_ms=COMPACT_TIMEOUT_MS)}; "
            f"SELECT metrics_prune_cursors({PRUNE_BATCH})"
        )
        deleted += int(count)
        if count < PRUNE_BATCH or time.monotonic() - started >= budget_s:
            return deleted


def compact_if_due(db: Database) -> None:
    """At most once a minute per metrics container."""
    global _last_compaction
    now = time.monotonic()
    if now - _last_compaction >= COMPACT_EVERY_S:
        _last_compaction = now
        compact(db)
