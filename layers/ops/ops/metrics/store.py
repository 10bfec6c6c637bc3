"""Flushing a container's deltas to the totals in PostgreSQL (read by ops.metrics.totals).

Flush protocol (one round trip, exactly once):

* Deltas go into numbered batches. A flush sends every batch not yet known to be
  stored in one simple-protocol query, `SET LOCAL statement_timeout = ...;
  SELECT metrics_flush(...)` (migrations/004_metrics_housekeeping.sql), which adds them to
  this container's shard rows and advances the container's cursor to the
  highest batch number, in one transaction.
* If the server answered with an error, or nothing was sent, nothing was stored:
  the batches stay open and later deltas merge into them. If the outcome is
  unknown (the query went out, then the connection broke or timed out), the
  batches are sealed and resent unchanged, with their numbers; the server skips
  those it already stored. Nothing is counted twice. Past MAX_SEALED_BATCHES
  the oldest sealed batch is dropped, and the result says so
  (ops.metrics.flushing counts and logs it as dropped).
* The query runs on a thread of its own (the outbox's `flush_thread`, an
  ops.concurrency.SerialThread), on the store's own
  connection (ops.db.store_db: checks and handlers never queue behind a flush).
  The caller waits for at most 2 x METRICS_FLUSH_TIMEOUT_MS (or its own budget,
  or not at all), so that a hung database cannot hold an invocation hostage; the
  job settles its outcome in the outbox whenever it ends. While one is running,
  later flushes keep their deltas instead of queueing. The server side has the
  same bound (statement_timeout).

A team's own families (ops.metrics.families: not the catalogue's) are declared with
the first flush that carries them, `SELECT metrics_declare(...)` in the same query
(migrations/009_metric_families.sql), so that the metrics function can expose them.
The store refuses a name another function declared with another shape (MF002):
that family's deltas are dropped here, for the rest of the container's life, and the
result says so (ops.metrics.flushing logs it and counts it); the rest is flushed.

The values travel as JSON literals in the query text: the simple protocol is one
round trip (pg8000's parameterised path takes three) and leaves no prepared
statement behind to pin an RDS Proxy connection.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pg8000.exceptions import DatabaseError

from ops.concurrency import SerialThread
from ops.config import settings
from ops.db import Database, DatabaseUnavailable, is_stale_error
from ops.metrics import families
from ops.metrics.pending import Deltas, SeriesKey
from ops.sql import error_fields, quote_literal, set_local_timeouts, sqlstate

MAX_SEALED_BATCHES = 64  # beyond this, the oldest unknown-outcome batch is dropped
MISSING_SERIES = "MF001"  # metrics_flush(): a series the caller believed stored is gone
FAMILY_CONFLICT = "MF002"  # metrics_declare(): a family declared elsewhere with another shape


@dataclass(frozen=True)
class StoreConfig:
    shards: int
    flush_timeout_ms: int


def config() -> StoreConfig:
    cfg = settings()
    return StoreConfig(shards=cfg.metrics_shards, flush_timeout_ms=cfg.metrics_flush_timeout_ms)


@dataclass
class DeltaBatch:
    """Deltas under one batch number: stored exactly once, whatever the resends."""

    seq: int
    since: float  # monotonic time of the oldest delta in it
    sums: dict[SeriesKey, float] = field(default_factory=dict)
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    sealed: bool = False  # sent with an unknown outcome: must be resent unchanged
    sending: bool = False  # in the running job: later deltas go to a new batch

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


def _json_arg(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "NULL"
    payload = json.dumps(rows, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"{quote_literal(payload)}::json"


def declarations(names: Iterable[str]) -> list[dict[str, Any]]:
    """The shapes of the team families among `names` (the catalogue's are the metrics
    function's own, and a function built on another layer version may differ)."""
    found = (families.REGISTRY.get(name) for name in names)
    return families.shape_rows(f for f in found if f is not None and f.team)


def flush_sql(
    container: str,
    shard: int,
    batches: list[DeltaBatch],
    timeout_ms: int,
    now: float,
    new_series: bool,
    shapes: list[dict[str, Any]] | None = None,
) -> str:
    """The one query of a flush; counters are stamped with the flush time. `shapes`: the
    team families to declare first (`declarations`), in the same transaction."""
    counters = [_row(b.seq, k, v, now) for b in batches for k, v in b.sums.items()]
    gauges = [_row(b.seq, k, v, at) for b in batches for k, (v, at) in b.gauges.items()]
    declare = (
        f"SELECT metrics_declare({quote_literal(settings().function_name)}, {_json_arg(shapes)}); "
        if shapes
        else ""
    )
    return (
        f"{set_local_timeouts(statement_timeout_ms=timeout_ms)}; {declare}"
        f"SELECT metrics_flush({quote_literal(container)}, {int(shard)}, {int(batches[-1].seq)}, "
        f"{_json_arg(counters)}, {_json_arg(gauges)}, {'true' if new_series else 'false'})"
    )


class FlushOutcome(StrEnum):
    STORED = "stored"
    REJECTED = "rejected"  # an error reply, or nothing was sent: nothing stored
    UNKNOWN = "unknown"  # sent, then no reply: maybe stored
    BUSY = "busy"  # the previous flush is still running: nothing sent
    PENDING = "pending"  # still running when the caller stopped waiting; it settles itself


@dataclass(frozen=True)
class FlushResult:
    outcome: FlushOutcome
    error: str | None = None
    answered: bool = False  # the server replied (it is up), whether or not it stored
    pending_series: int = 0
    dropped_batches: int = 0  # unconfirmed batches discarded past MAX_SEALED_BATCHES
    dropped_series: int = 0
    refused: tuple[str, ...] = ()  # families the store refused in this flush (MF002 detail)
    refused_series: int = 0  # series deltas dropped because their family was refused
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def stored(self) -> bool:
        return self.outcome == FlushOutcome.STORED


Report = Callable[[FlushResult], None]


class _NotSent(Exception):
    """The flush failed before anything reached the server."""


def _classify(exc: BaseException | None) -> tuple[FlushOutcome, str | None, bool]:
    """(outcome, error, whether the server answered)."""
    if exc is None:
        return FlushOutcome.STORED, None, True
    if isinstance(exc, _NotSent):
        return FlushOutcome.REJECTED, str(exc), False
    if isinstance(exc, DatabaseError) and not is_stale_error(exc):
        # An error reply (statement timeout, missing migration, ...): rolled back.
        info = error_fields(exc)
        return FlushOutcome.REJECTED, f"{info.get('C', '')} {info.get('M', exc)}".strip(), True
    return FlushOutcome.UNKNOWN, str(exc) or type(exc).__name__, False


class _Job:
    """One flush on the flush thread; retried once when a stored series has gone.
    Settles its own outcome in the outbox when it ends, whether or not anyone waits."""

    def __init__(
        self,
        box: Outbox,
        db: Database,
        batches: list[DeltaBatch],
        now: float,
        report: Report | None,
    ) -> None:
        self.box = box
        self.db = db
        self.batches = batches
        self.now = now
        self.report = report
        self.timeout_ms = config().flush_timeout_ms
        self.believed_known = not any(k not in box.known for b in batches for k in b.series_keys())
        self.new_series = not self.believed_known
        names = {k.family for b in batches for k in b.series_keys()}
        names -= box.declared | box.refused | (families.RESERVED or frozenset())
        self.families = declarations(names) if names else []
        self.refused: tuple[str, ...] = ()
        self.refused_series = 0
        self.done = threading.Event()
        self.started = time.monotonic()
        self.result = FlushResult(FlushOutcome.PENDING)

    def sql(self, new_series: bool) -> str:
        return flush_sql(
            self.box.container,
            self.box.shard,
            self.batches,
            self.timeout_ms,
            self.now,
            new_series,
            self.families,
        )

    def refuse(self, exc: DatabaseError) -> None:
        """MF002: drop the refused families' deltas (now and later); flush the rest."""
        detail = str(error_fields(exc).get("D", ""))
        reasons = [line for line in detail.splitlines() if line]
        names = {line.split(": declared by ", 1)[0] for line in reasons}
        self.refused = tuple(reasons)
        self.families = [f for f in self.families if f["family"] not in names]
        self.refused_series += self.box.refuse(names, self.batches)

    def run(self) -> None:
        error: BaseException | None = None
        self.started = time.monotonic()
        try:
            try:
                # Connecting first tells "could not connect" (nothing sent) apart
                # from a failure after the query went out; a kept connection the
                # server has closed is replaced first, so that this holds for it too.
                self.db.connection(check_alive=True)
            except DatabaseUnavailable as exc:
                raise _NotSent(str(exc)) from exc
            while True:  # at most three calls: each retry fixes what the last refused
                try:
                    self.db.run(self.sql(self.new_series))
                    break
                except DatabaseError as exc:  # either way the call stored nothing
                    if sqlstate(exc) == FAMILY_CONFLICT and not self.refused:
                        self.refuse(exc)
                    elif sqlstate(exc) == MISSING_SERIES and not self.new_series:
                        self.new_series = True
                    else:
                        raise
        except BaseException as exc:
            error = exc
        try:
            self.result = self.box.settle(self, error)
            if self.report is not None:
                self.report(self.result)
        except BaseException:  # never kill the flush thread
            pass
        finally:
            self.done.set()

    def wait(self, timeout_s: float) -> FlushResult:
        if self.done.wait(max(0.0, timeout_s)):
            return self.result
        return FlushResult(
            FlushOutcome.PENDING,
            f"no reply within {round(timeout_s * 1000)} ms",
            pending_series=self.box.pending_series,
        )


class Outbox:
    """This container's identity, shard, and the batches not yet known to be stored.

    Shared by the invocation, the flush thread (which settles each flush's outcome) and
    the process hooks' thread (deadline, idle and shutdown flushes): one lock, never held
    across I/O.
    """

    def __init__(self, shards: int) -> None:
        self.container = uuid.uuid4().hex
        self.shard = random.randrange(shards)
        self.batches: list[DeltaBatch] = []
        self.next_seq = 1
        self.known: set[SeriesKey] = set()  # series this container has stored
        self.declared: set[str] = set()  # team families whose shape the store has taken
        self.refused: set[str] = set()  # team families the store refused: never sent
        self.flush_thread = SerialThread("metrics-flush")  # this container's flush jobs
        self.in_flight: _Job | None = None
        self.reply_s: float | None = None  # how long the last answered flush took
        self.lock = threading.Lock()

    def add(self, deltas: Deltas) -> None:
        if not deltas:
            return
        since = deltas.since if deltas.since is not None else time.monotonic()
        with self.lock:
            last = self.batches[-1] if self.batches else None
            if last is None or last.sealed or last.sending:
                last = DeltaBatch(self.next_seq, since)
                self.next_seq += 1
                self.batches.append(last)
            last.merge(deltas)
            last.since = min(last.since, since)

    @property
    def pending_series(self) -> int:
        return sum(b.series for b in self.batches)

    def refuse(self, families: set[str], batches: Iterable[DeltaBatch]) -> int:
        """Drop the deltas of `families` from `batches` (and later ones); how many series."""
        dropped = 0
        with self.lock:
            self.refused |= families
            for batch in batches:
                dropped += _drop(batch.sums, self.refused) + _drop(batch.gauges, self.refused)
        return dropped

    def oldest(self) -> float | None:
        """Monotonic time of the oldest delta not yet known to be stored."""
        batches = self.batches
        return min((b.since for b in batches), default=None)

    def start(self, db: Database, now: float, report: Report | None) -> _Job | FlushResult:
        """Hand every pending batch to the flush thread in one job, unless one is running."""
        with self.lock:
            if self.in_flight is not None:
                return FlushResult(
                    FlushOutcome.BUSY,
                    "the previous flush is still running",
                    pending_series=self.pending_series,
                )
            if not self.batches:
                return FlushResult(FlushOutcome.STORED)
            batches = list(self.batches)
            for batch in batches:
                batch.sending = True
            job = _Job(self, db, batches, now, report)
            self.in_flight = job
        if self.refused:  # recorded since the store refused them: dropped, and counted
            job.refused_series = self.refuse(set(), batches)
        self.flush_thread.submit(job)
        return job

    def settle(self, job: _Job, error: BaseException | None) -> FlushResult:
        outcome, message, answered = _classify(error)
        dropped_batches = dropped_series = 0
        if answered:
            self.reply_s = time.monotonic() - job.started
        with self.lock:
            for batch in job.batches:
                batch.sending = False
            if outcome == FlushOutcome.STORED:
                self.declared.update(f["family"] for f in job.families)
                for batch in job.batches:
                    self.known.update(batch.series_keys())
                sent = {id(b) for b in job.batches}
                self.batches = [b for b in self.batches if id(b) not in sent]
            else:
                if job.new_series and job.believed_known:
                    self.known.clear()  # some series had gone: look them all up next time
                if outcome == FlushOutcome.UNKNOWN:
                    for batch in job.batches:
                        batch.sealed = True
                    # Bounded memory through a long silent outage: the oldest unconfirmed
                    # batches go (they may or may not have been stored).
                    while sum(b.sealed for b in self.batches) > MAX_SEALED_BATCHES:
                        dropped = next(b for b in self.batches if b.sealed)
                        self.batches.remove(dropped)
                        dropped_batches += 1
                        dropped_series += dropped.series
            self.in_flight = None
            pending = self.pending_series
        return FlushResult(
            outcome,
            message,
            answered,
            pending,
            dropped_batches,
            dropped_series,
            job.refused,
            job.refused_series,
            error,
        )

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for the running flush, if any, to settle; False when it did not in time."""
        job = self.in_flight
        return job is None or job.done.wait(max(0.0, timeout_s))


def _drop(series: dict[SeriesKey, Any], families: set[str]) -> int:
    gone = [key for key in series if key.family in families]
    for key in gone:
        del series[key]
    return len(gone)


def push(
    box: Outbox,
    db: Database,
    deltas: Deltas,
    now: float,
    *,
    wait_s: float | None = None,
    meanwhile: Callable[[], None] = lambda: None,
    report: Report | None = None,
    wait_busy: bool = True,
) -> FlushResult:
    """Add the deltas to the outbox and send all of it in one job, on the store's own
    connection (`db`: ops.db.store_db's, unless a ContainerMetrics has its own).

    Waits for the outcome at most `wait_s` (default 2 x METRICS_FLUSH_TIMEOUT_MS; 0 hands
    the job over and returns PENDING). `meanwhile` runs while the query is in flight (or
    at once when nothing is sent); `report` is called with the outcome when the job ends.
    While a flush runs, the call waits for it first (within `wait_s`) unless `wait_busy`
    is False: then it returns BUSY at once.
    """
    box.add(deltas)
    if wait_s is None:
        wait_s = 2 * config().flush_timeout_ms / 1000.0
    deadline = time.monotonic() + wait_s
    started = box.start(db, now, report)
    busy = isinstance(started, FlushResult) and started.outcome == FlushOutcome.BUSY
    # A flush handed over earlier (liveness, a deadline) is running: let it settle.
    if busy and wait_busy and wait_s > 0 and box.wait_idle(wait_s):
        started = box.start(db, now, report)
    if isinstance(started, FlushResult):
        meanwhile()
        return started
    time.sleep(0)  # let the flush thread take the GIL and send its query...
    meanwhile()  # ...so that this overlaps the wait for the server
    return started.wait(deadline - time.monotonic())
