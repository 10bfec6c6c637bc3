"""The metric totals in PostgreSQL: flushing a container's deltas, reading the sums.

Flush protocol (one round trip, exactly once):

* Deltas go into numbered batches. Every flush sends all batches not yet known
  to be stored in one simple-protocol query: `SET LOCAL statement_timeout` and
  a call of `metrics_flush()` (migrations/002_metrics.sql), which adds them to
  this container's shard rows and advances the container's cursor to the
  highest batch number, atomically.
* If the server answered with an error, nothing was stored: the batches stay
  open and the next deltas merge into them. If the outcome is unknown (the
  connection broke or the reply did not come in time after the query was
  sent), the batches are sealed: they are resent as they are, with their
  numbers, and the server skips those it already stored. No double counting.
* The query runs on a helper thread that the invocation waits on for at most
  2 x METRICS_FLUSH_TIMEOUT_MS, so a hung database cannot hold an invocation
  hostage; while a flush is stuck, later flushes are skipped (kept, not sent).

Values are sent as one JSON literal in the query text: the simple protocol is
one round trip (pg8000's parameterised path is three) and leaves no prepared
statement behind to pin an RDS Proxy connection.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from queue import SimpleQueue
from typing import Any

from pg8000.exceptions import DatabaseError

from ops.db import Database, DatabaseUnavailable, get_db, is_stale_error
from ops.metrics.recorder import Deltas, SeriesKey

DEFAULT_SHARDS = 16
DEFAULT_FLUSH_TIMEOUT_MS = 500
MAX_SEALED_BATCHES = 64  # beyond this, the oldest unknown-outcome batch is dropped


@dataclass(frozen=True)
class StoreConfig:
    shards: int
    flush_timeout_ms: int


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
    return value


@lru_cache(maxsize=1)
def config() -> StoreConfig:
    return StoreConfig(
        shards=_env_int("METRICS_SHARDS", DEFAULT_SHARDS, 1, 1024),
        flush_timeout_ms=_env_int("METRICS_FLUSH_TIMEOUT_MS", DEFAULT_FLUSH_TIMEOUT_MS, 10, 60_000),
    )


@dataclass
class Batch:
    seq: int
    sums: dict[SeriesKey, float] = field(default_factory=dict)
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    sealed: bool = False  # sent with an unknown outcome: must be resent unchanged

    def merge(self, deltas: Deltas) -> None:
        sums = self.sums
        for key, amount in deltas.sums.items():
            sums[key] = sums.get(key, 0.0) + amount
        for key, reading in deltas.gauges.items():
            if key not in self.gauges or reading[1] >= self.gauges[key][1]:
                self.gauges[key] = reading

    def rows(self, now: float) -> list[dict[str, Any]]:
        rows = [
            {"seq": self.seq, "family": f, "labels": lb, "part": p, "kind": "c", "value": v, "at": now}
            for (f, lb, p), v in self.sums.items()
        ]
        rows += [
            {"seq": self.seq, "family": f, "labels": lb, "part": p, "kind": "g", "value": v, "at": t}
            for (f, lb, p), (v, t) in self.gauges.items()
        ]
        return rows

    @property
    def series(self) -> int:
        return len(self.sums) + len(self.gauges)


class FlushOutcome:
    STORED = "stored"
    REJECTED = "rejected"  # the server said no, or nothing was sent: nothing stored
    UNKNOWN = "unknown"  # sent, no reply: maybe stored
    BUSY = "busy"  # the previous flush is still running


@dataclass(frozen=True)
class FlushResult:
    outcome: str
    error: str | None = None
    dropped_series: int = 0
    pending_series: int = 0


class _NotSent(Exception):
    """The flush failed before anything reached the server."""


class _Job:
    def __init__(self, sql: str, db: Database) -> None:
        self.sql = sql
        self.db = db
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            try:
                # Connecting first tells "could not connect" (nothing sent) apart from a
                # failure after the query went out.
                self.db.connection()
            except DatabaseUnavailable as exc:
                raise _NotSent(str(exc)) from exc
            self.db.run(self.sql)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


class _Courier:
    """One daemon thread that runs flushes, so that the invocation can stop waiting."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._current: _Job | None = None

    @property
    def busy(self) -> bool:
        return self._current is not None and not self._current.done.is_set()

    def run(self, job: _Job, wait_s: float) -> bool:
        """Hand the job over; True when it finished within `wait_s`."""
        self._current = job
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="metrics-flush", daemon=True)
            self._thread.start()
        self._jobs.put(job)
        return job.done.wait(wait_s)

    def _serve(self) -> None:
        while True:
            self._jobs.get().run()


def sql_literal(text: str) -> str:
    """An E'' string literal: correct whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def flush_sql(container: str, shard: int, batches: list[Batch], timeout_ms: int, now: float) -> str:
    rows = [row for batch in batches for row in batch.rows(now)]
    payload = json.dumps(rows, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (
        f"SET LOCAL statement_timeout = {int(timeout_ms)}; "
        f"SELECT metrics_flush({sql_literal(container)}, {int(shard)}, "
        f"{int(batches[-1].seq)}, {sql_literal(payload)}::json)"
    )


def _classify(job: _Job) -> tuple[str, str | None]:
    exc = job.error
    if exc is None:
        return FlushOutcome.STORED, None
    if isinstance(exc, _NotSent):
        return FlushOutcome.REJECTED, str(exc)
    if isinstance(exc, DatabaseError) and not is_stale_error(exc):
        # An error reply (statement timeout, missing migration, ...): rolled back.
        return FlushOutcome.REJECTED, _db_error_text(exc)
    return FlushOutcome.UNKNOWN, str(exc) or type(exc).__name__


def _db_error_text(exc: DatabaseError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else None
    if info is None:
        return str(exc)
    return f"{info.get('C', '')} {info.get('M', '')}".strip()


class Outbox:
    """This container's batches that are not yet known to be stored, oldest first."""

    def __init__(self, shards: int) -> None:
        self.container = uuid.uuid4().hex
        self.shard = random.randrange(shards)
        self.batches: list[Batch] = []
        self.next_seq = 1
        self.courier = _Courier()

    def add(self, deltas: Deltas) -> None:
        if not deltas:
            return
        if not self.batches or self.batches[-1].sealed:
            self.batches.append(Batch(self.next_seq))
            self.next_seq += 1
        self.batches[-1].merge(deltas)

    @property
    def pending_series(self) -> int:
        return sum(b.series for b in self.batches)

    def send(self, db: Database, now: float) -> FlushResult:
        if not self.batches:
            return FlushResult(FlushOutcome.STORED)
        if self.courier.busy:
            return FlushResult(
                FlushOutcome.BUSY, "previous flush still running", 0, self.pending_series
            )
        cfg = config()
        job = _Job(flush_sql(self.container, self.shard, self.batches, cfg.flush_timeout_ms, now), db)
        if not self.courier.run(job, 2 * cfg.flush_timeout_ms / 1000.0):
            outcome, error = FlushOutcome.UNKNOWN, f"no reply within {2 * cfg.flush_timeout_ms} ms"
        else:
            outcome, error = _classify(job)
        if outcome == FlushOutcome.STORED:
            self.batches.clear()
            return FlushResult(outcome)
        dropped = 0
        if outcome == FlushOutcome.UNKNOWN:
            for batch in self.batches:
                batch.sealed = True
            while len(self.batches) > MAX_SEALED_BATCHES:
                dropped += self.batches.pop(0).series
        return FlushResult(outcome, error, dropped, self.pending_series)


_outbox: Outbox | None = None


def outbox() -> Outbox:
    global _outbox
    if _outbox is None:
        _outbox = Outbox(config().shards)
    return _outbox


def reset() -> None:
    """A new container: new identity and shard, nothing pending (tests)."""
    global _outbox
    _outbox = None
    config.cache_clear()


def push(deltas: Deltas, now: float) -> FlushResult:
    """Add the deltas to what is pending and try to store all of it."""
    box = outbox()
    box.add(deltas)
    return box.send(get_db(), now)


# -- reading -------------------------------------------------------------------------------

# Sums over shards run on integer keys; the text columns are joined once per
# series. Each label set comes back as one row, its parts as "part value" pairs
# (a few hundred rows rather than thousands: pg8000 parses rows in Python).
TOTALS_SQL = """
SELECT s.family, s.labels,
       string_agg(s.part || ' ' || (CASE WHEN s.kind = 'g' THEN (
                      SELECT v.value FROM metric_values v
                      WHERE v.series_id = s.id ORDER BY v.updated_at DESC LIMIT 1)
                  ELSE t.value END)::text, ' ')
FROM (SELECT series_id, sum(value) AS value FROM metric_values GROUP BY series_id) AS t
JOIN metric_series AS s ON s.id = t.series_id
GROUP BY s.family, s.labels
ORDER BY s.family, s.labels
"""

# family -> [(rendered labels, {part: value})]
Totals = dict[str, list[tuple[str, dict[str, float]]]]


def read_totals(db: Database) -> Totals:
    totals: Totals = {}
    for family, labels, packed in db.run(TOTALS_SQL):
        tokens = packed.split(" ")
        parts = {tokens[i]: float(tokens[i + 1]) for i in range(0, len(tokens), 2)}
        totals.setdefault(family, []).append((labels, parts))
    return totals
