"""Durable flushes (issue 18, item 3): what it costs to acknowledge a flush only once its
commit is on disk (migration 008) instead of with `synchronous_commit=off` (002 to 007).

One throwaway PostgreSQL on 127.0.0.1 with PostgreSQL's durable defaults (fsync,
synchronous_commit and full_page_writes on: `PgCluster(durable=True)`; the other suites
turn all three off), and two databases on it: *before*, migrated up to 007, and *after*,
migrated fully. Both receive the query the store sends (`store.flush_sql`: `SET LOCAL
statement_timeout; SELECT metrics_flush(...)`) carrying one invocation's deltas (the
HTTP counter and its duration histogram, recorded through the catalogue).

* One writer: flushes to *before* and *after* interleaved, one connection each; p50/p99
  of the round trip.
* Concurrent writers: threads, each a container of its own with its own connection and
  shard, all flushing the same series (one hot route: every flush wants the same total
  rows, which *after* now holds locked across its WAL flush; the rest spill); *before*
  and *after* alternate round by round. Flushes/s, p50/p99, the WAL written and the WAL
  fsyncs (cluster-wide counters, read after the round's connections closed).

Run: `.venv/bin/python -m benchmarks durability [--quick]`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.stats import nearest_rank
from tools.migrate import apply, migration_files
from tools.pgcluster import PgCluster

DURABLE_FROM = "008"  # the first migration whose metrics_flush commits durably


@dataclass(frozen=True)
class Plan:
    single: int  # flushes per variant, interleaved
    writers: int
    per_writer: int  # flushes per writer per round
    rounds: int  # per variant, alternating


QUICK = Plan(single=300, writers=4, per_writer=100, rounds=1)
FULL = Plan(single=2000, writers=4, per_writer=400, rounds=3)


def _connect(url: str) -> Any:
    from ops.db import connect_url

    return connect_url(url, timeout_s=30)


def _migrate(url: str, *, upto: str | None) -> None:
    """Every migration, or those numbered below `upto` (a folder of copies)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-migrations-"))
    try:
        for path in migration_files():
            if upto is None or path.name[:3] < upto:
                shutil.copy(path, folder / path.name)
        conn = _connect(url)
        try:
            apply(conn, folder, allow_unknown=False)
        finally:
            conn.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _databases() -> Iterator[dict[str, str]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-durability-"))
    cluster = PgCluster(folder / "data", durable=True)
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    try:
        urls = {"before": cluster.create_database("flush_async")}
        urls["after"] = cluster.create_database("flush_durable")
        _migrate(urls["before"], upto=DURABLE_FROM)
        _migrate(urls["after"], upto=None)
        yield urls
    finally:
        cluster.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def _invocation_deltas() -> dict[Any, float]:
    """What one API invocation records (the request counter and its duration histogram),
    recorded through the catalogue and taken as the flush takes them."""
    from ops.metrics import catalogue as m
    from ops.metrics import current

    pending = current().pending
    pending.take_deltas()  # nothing recorded before counts
    m.HTTP_REQUESTS.labels(method="GET", route="/hot", status="200").inc()
    m.HTTP_REQUEST_DURATION.labels(method="GET", route="/hot").observe(0.042)
    return dict(pending.take_deltas().sums)


class _Container:
    """One container's flushes, as the store words them (numbered batches, one query)."""

    def __init__(self, url: str, shard: int) -> None:
        self.conn = _connect(url)
        self.name, self.shard, self.seq = str(uuid.uuid4()), shard, 0
        self.sums = _invocation_deltas()

    def flush(self) -> float:
        """One flush; its round trip in ms."""
        from ops.metrics.store import DeltaBatch, flush_sql

        self.seq += 1
        batch = DeltaBatch(self.seq, time.monotonic(), sums=self.sums)
        query = flush_sql(self.name, self.shard, [batch], 5000, time.time(), self.seq == 1)
        started = time.perf_counter()
        self.conn.run(query)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.conn.close()


def _wal(url: str) -> tuple[float, float]:
    """Cluster-wide WAL bytes written and WAL fsyncs so far (PostgreSQL 15 or 16+)."""
    conn = _connect(url)
    try:
        wal_bytes = float(conn.run("SELECT wal_bytes FROM pg_stat_wal")[0][0])
        try:
            syncs = conn.run("SELECT wal_sync FROM pg_stat_wal")[0][0]
        except Exception:  # 18 moved it: pg_stat_io's WAL rows
            syncs = conn.run("SELECT sum(fsyncs) FROM pg_stat_io WHERE object = 'wal'")[0][0]
        return wal_bytes, float(syncs or 0)
    finally:
        conn.close()


def single_writer(urls: dict[str, str], plan: Plan) -> tuple[list[str], dict[str, float]]:
    containers = {variant: _Container(url, shard=1) for variant, url in urls.items()}
    times: dict[str, list[float]] = {variant: [] for variant in urls}
    try:
        for _ in range(20):  # warm: plpgsql plan cached, series created
            for c in containers.values():
                c.flush()
        for i in range(plan.single):
            order = list(containers) if i % 2 == 0 else list(reversed(containers))
            for variant in order:
                times[variant].append(containers[variant].flush())
    finally:
        for c in containers.values():
            c.close()
    stats = {
        f"{variant}_{q}": nearest_rank(times[variant], q) for variant in urls for q in (50, 99)
    }
    rows = [
        f"| one writer | {variant} | - | {stats[f'{variant}_50']:.3f} "
        f"| {stats[f'{variant}_99']:.3f} | - | - | - |"
        for variant in urls
    ]
    return rows, stats


def _round(url: str, plan: Plan) -> dict[str, float]:
    containers = [_Container(url, shard=i + 1) for i in range(plan.writers)]
    times: list[list[float]] = [[] for _ in containers]
    gate = threading.Barrier(plan.writers + 1)

    def work(index: int) -> None:
        c = containers[index]
        c.flush()  # its series and cursor exist before the clock starts
        gate.wait()
        times[index].extend(c.flush() for _ in range(plan.per_writer))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(plan.writers)]
    for t in threads:
        t.start()
    wal_before = _wal(url)
    gate.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    for c in containers:
        c.close()  # a closed backend's statistics are flushed to the shared counters
    time.sleep(0.5)
    wal_after = _wal(url)
    flushes = plan.writers * plan.per_writer
    spill = _spill_share(url)
    every = [ms for per in times for ms in per]
    return {
        "per_s": flushes / wall,
        "p50": nearest_rank(every, 50),
        "p99": nearest_rank(every, 99),
        "wal_bytes": (wal_after[0] - wal_before[0]) / flushes,
        "wal_syncs": (wal_after[1] - wal_before[1]) / flushes,
        "spill": spill,
    }


def _spill_share(url: str) -> float:
    """The hot counter's value held in spill rows (not yet compacted), as a share."""
    conn = _connect(url)
    try:
        rows = conn.run(
            "SELECT coalesce(sum(v.value) FILTER (WHERE v.shard <> 0), 0), sum(v.value) "
            "FROM metric_values v JOIN metric_series s ON s.id = v.series_id "
            "WHERE s.family = 'http_requests_total' AND s.kind = 'c'"
        )
        conn.run("TRUNCATE metric_values, metric_series, metric_flush_cursors")
        return float(rows[0][0]) / float(rows[0][1]) if rows[0][1] else 0.0
    finally:
        conn.close()


def concurrent_writers(urls: dict[str, str], plan: Plan) -> tuple[list[str], dict[str, float]]:
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in urls}
    for r in range(plan.rounds):
        order = list(urls) if r % 2 == 0 else list(reversed(urls))
        for variant in order:
            results[variant].append(_round(urls[variant], plan))
    stats: dict[str, float] = {}
    rows = []
    for variant, rounds in results.items():

        def med(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return nearest_rank([r[key] for r in rounds], 50)

        for key in ("per_s", "p50", "p99", "wal_bytes", "wal_syncs", "spill"):
            stats[f"{variant}_{plan.writers}w_{key}"] = med(key)
        rows.append(
            f"| {plan.writers} writers, one hot route | {variant} | {med('per_s'):,.0f} "
            f"| {med('p50'):.3f} | {med('p99'):.3f} | {med('wal_bytes'):,.0f} "
            f"| {med('wal_syncs'):.2f} | {med('spill'):.0%} |"
        )
    return rows, stats


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    load_before, began = os.getloadavg()[0], time.monotonic()
    with _databases() as urls:
        single_rows, single = single_writer(urls, plan)
        many_rows, _ = concurrent_writers(urls, plan)
        version = _version(urls["after"])
    load_after, took = os.getloadavg()[0], time.monotonic() - began

    def ratio(q: int) -> float:
        return single[f"after_{q}"] / single[f"before_{q}"]

    return "\n".join(
        [
            "## Durable flushes: the cost of acknowledging a flush once on disk (issue 18)",
            "",
            "*before*: `metrics_flush()` of migration 007 (`synchronous_commit=off`: a crash "
            "could take back a flush a scrape had served); *after*: migration 008 (the commit "
            "waits for its WAL flush). Same cluster, same run, PostgreSQL's durable defaults "
            f"(fsync on; {version}), on this machine's disk. Each flush carries one "
            "invocation's deltas (the request counter and its duration histogram). One-writer "
            f"flushes: {plan.single} per variant, interleaved; concurrent: {plan.rounds} "
            f"round(s) of {plan.writers} threads x {plan.per_writer} flushes per variant, "
            "alternating, medians of the rounds. Round trip of the store's query, ms; WAL per "
            "flush is cluster-wide (the WAL writer's own writes included).",
            "",
            "| load | variant | flushes/s | p50 ms | p99 ms | WAL bytes/flush "
            "| WAL fsyncs/flush | hot counter in spill rows |",
            "|---|---|---|---|---|---|---|---|",
            *single_rows,
            *many_rows,
            "",
            f"One writer, after/before: p50 x{ratio(50):.1f}, p99 x{ratio(99):.1f}. The price "
            "is a WAL fsync per flush (concurrent commits share one: group commit), paid by "
            "the invocation that flushes (by the flush thread for liveness and `/metrics`), "
            "and the total rows held locked across it, so that concurrent flushes of the same "
            "series spill more (compaction folds the spill rows later). It is this disk's "
            "fsync time: `pg_test_fsync` on the database's volume tells yours.",
            "",
            f"Machine load (1-min average) {load_before:.2f} before, {load_after:.2f} after "
            f"(2 shared cores); suite time {took:.0f} s.",
        ]
    )


def _version(url: str) -> str:
    conn = _connect(url)
    try:
        return "PostgreSQL " + str(conn.run("SHOW server_version")[0][0]).split()[0]
    finally:
        conn.close()
