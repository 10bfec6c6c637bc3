"""Flushing a container's deltas to the totals in PostgreSQL (read by ops.metrics.totals).

Flush protocol (one round trip, exactly once):

* Deltas go into numbered batches. A flush sends every batch not yet known to be
  stored in one simple-protocol query, `SET LOCAL statement_timeout = ...;
  SELECT metrics_flush(...)` (migrations/002_metrics.sql), which adds them to
  this container's shard rows and advances the container's cursor to the
  highest batch number, in one transaction.
* If the server answered with an error, or nothing was sent, nothing was stored:
  the batches stay open and later deltas merge into them. If the outcome is
  unknown (the query went out, then the connection broke or no reply came in
  time), the batches are sealed and resent unchanged, with their numbers; the
  server skips those it already stored. Nothing is counted twice.
* The query runs on a helper thread (ops.metrics.courier) that the invocation
  waits on for at most 2 x METRICS_FLUSH_TIMEOUT_MS, so that neither a hung
  database nor a health check stuck on the shared connection can hold an
  invocation hostage. While a flush is stuck, later flushes keep their deltas
  instead of queueing. The server side has the same bound (statement_timeout).

The values travel as JSON literals in the query text: the simple protocol is one
round trip (pg8000's parameterised path takes three) and leaves no prepared
statement behind to pin an RDS Proxy connection.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pg8000.exceptions import DatabaseError

from ops.config import settings
from ops.db import Database, DatabaseUnavailable, get_db, is_stale_error
from ops.metrics.courier import Courier
from ops.metrics.recorder import Deltas, SeriesKey

MAX_SEALED_BATCHES = 64  # beyond this, the oldest unknown-outcome batch is dropped
MISSING_SERIES = "MF001"  # metrics_flush(): a series the caller believed stored is gone


@dataclass(frozen=True)
class StoreConfig:
    shards: int
    flush_timeout_ms: int


def config() -> StoreConfig:
    cfg = settings()
    return StoreConfig(shards=cfg.metrics_shards, flush_timeout_ms=cfg.metrics_flush_timeout_ms)


@dataclass
class Batch:
    seq: int
    sums: dict[SeriesKey, float] = field(default_factory=dict)
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    sealed: bool = False  # sent with an unknown outcome: must be resent unchanged

    def merge(self, deltas: Deltas) -> None:
        sums, gauges = self.sums, self.gauges
        for key, amount in deltas.sums.items():
            sums[key] = sums.get(key, 0.0) + amount
        for key, reading in deltas.gauges.items():
            if key not in gauges or reading[1] >= gauges[key][1]:
                gauges[key] = reading

    def series_keys(self) -> Iterable[SeriesKey]:
        yield from self.sums
        yield from self.gauges

    @property
    def series(self) -> int:
        return len(self.sums) + len(self.gauges)


def _row(seq: int, key: SeriesKey, value: float, at: float) -> dict[str, Any]:
    family, labels, part = key
    return {"seq": seq, "family": family, "labels": labels, "part": part, "value": value, "at": at}


def sql_literal(text: str) -> str:
    """An E'' string literal: correct whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _json_arg(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "NULL"
    payload = json.dumps(rows, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"{sql_literal(payload)}::json"


def flush_sql(
    container: str, shard: int, batches: list[Batch], timeout_ms: int, now: float, new_series: bool
) -> str:
    """The one query of a flush; counters are stamped with the flush time."""
    counters = [_row(b.seq, k, v, now) for b in batches for k, v in b.sums.items()]
    gauges = [_row(b.seq, k, v, at) for b in batches for k, (v, at) in b.gauges.items()]
    return (
        f"SET LOCAL statement_timeout = {int(timeout_ms)}; "
        f"SELECT metrics_flush({sql_literal(container)}, {int(shard)}, {int(batches[-1].seq)}, "
        f"{_json_arg(counters)}, {_json_arg(gauges)}, {'true' if new_series else 'false'})"
    )


class FlushOutcome:
    STORED = "stored"
    REJECTED = "rejected"  # an error reply, or nothing was sent: nothing stored
    UNKNOWN = "unknown"  # sent, then no reply: maybe stored
    BUSY = "busy"  # the previous flush is still running: nothing sent


@dataclass(frozen=True)
class FlushResult:
    outcome: str
    error: str | None = None
    dropped_series: int = 0
    pending_series: int = 0


class _NotSent(Exception):
    """The flush failed before anything reached the server."""


def _error_fields(exc: BaseException) -> dict[str, Any]:
    """The server's error fields (C: SQLSTATE, M: message), when it sent an error."""
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return exc.args[0]
    return {}


class _Job:
    """One flush on the courier thread; retried once when a stored series has gone."""

    def __init__(self, db: Database, sql: Callable[[bool], str], new_series: bool) -> None:
        self.db = db
        self.sql = sql
        self.new_series = new_series
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            try:
                # Connecting first tells "could not connect" (nothing sent) apart
                # from a failure after the query went out.
                self.db.connection()
            except DatabaseUnavailable as exc:
                raise _NotSent(str(exc)) from exc
            try:
                self.db.run(self.sql(self.new_series))
            except DatabaseError as exc:
                if self.new_series or _error_fields(exc).get("C") != MISSING_SERIES:
                    raise
                self.new_series = True  # the first call stored nothing
                self.db.run(self.sql(True))
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished = True


def _classify(job: _Job) -> tuple[str, str | None]:
    exc = job.error
    if exc is None:
        return FlushOutcome.STORED, None
    if isinstance(exc, _NotSent):
        return FlushOutcome.REJECTED, str(exc)
    if isinstance(exc, DatabaseError) and not is_stale_error(exc):
        # An error reply (statement timeout, missing migration, ...): rolled back.
        info = _error_fields(exc)
        return FlushOutcome.REJECTED, f"{info.get('C', '')} {info.get('M', exc)}".strip()
    return FlushOutcome.UNKNOWN, str(exc) or type(exc).__name__


class Outbox:
    """This container's identity, shard, and the batches not yet known to be stored."""

    def __init__(self, shards: int) -> None:
        self.container = uuid.uuid4().hex
        self.shard = random.randrange(shards)
        self.batches: list[Batch] = []
        self.next_seq = 1
        self.known: set[SeriesKey] = set()  # series this container has stored
        self.courier = Courier("metrics-flush")

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

    def send(self, db: Database, now: float, meanwhile: Callable[[], None]) -> FlushResult:
        """Try to store every pending batch; `meanwhile` is called once, whatever happens."""
        if not self.batches or self.courier.busy:
            meanwhile()
            if not self.batches:
                return FlushResult(FlushOutcome.STORED)
            return FlushResult(
                FlushOutcome.BUSY, "the previous flush is still running", 0, self.pending_series
            )
        batches = list(self.batches)
        timeout_ms = config().flush_timeout_ms

        def sql(new_series: bool) -> str:
            return flush_sql(self.container, self.shard, batches, timeout_ms, now, new_series)

        new_series = any(k not in self.known for b in batches for k in b.series_keys())
        job = _Job(db, sql, new_series)
        if self.courier.run(job, 2 * timeout_ms / 1000.0, meanwhile):
            outcome, error = _classify(job)
        else:
            outcome, error = FlushOutcome.UNKNOWN, f"no reply within {2 * timeout_ms} ms"
        if outcome == FlushOutcome.STORED:
            for batch in batches:
                self.known.update(batch.series_keys())
            del self.batches[: len(batches)]
            return FlushResult(outcome)
        if job.new_series and not new_series:
            self.known.clear()  # some series had gone: look them all up next time
        dropped = 0
        if outcome == FlushOutcome.UNKNOWN:
            for batch in batches:
                batch.sealed = True
            while sum(b.sealed for b in self.batches) > MAX_SEALED_BATCHES:
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


def push(deltas: Deltas, now: float, meanwhile: Callable[[], None] = lambda: None) -> FlushResult:
    """Add the deltas to what is pending and try to store all of it. `meanwhile` runs
    while the query is in flight (or at once when nothing is sent)."""
    box = outbox()
    box.add(deltas)
    return box.send(get_db(), now, meanwhile)
