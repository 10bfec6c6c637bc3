"""What the database's own gauges (issue 21) and per-gauge isolation (issue 18) cost a scrape.

One throwaway PostgreSQL on 127.0.0.1 with pg_stat_statements loaded and installed
(2,000 distinct statements in it, so that the top-N read has something to sort), the
default retention policies with rows in both tables. The metrics function's handler
(the whole `/metrics` invocation: checks, store read, live gauges, render, flush
hand-off) and `live_gauges.collect` alone, interleaved round by round, in four variants:

* *before*: only the live gauges that existed before issue 21 (the `pg_*` readings
  filtered out): the baseline;
* *no extension*: every reading, pg_stat_statements' presence check finding nothing;
* *all*: every reading, the top 10 statements read from pg_stat_statements;
* *one failing*: every reading, one of them failing on the server (a division by zero
  in the pg_stat_activity reading): the batched statement fails and each reading is
  retried in its own statement.

Round trips are counted by wrapping `Database.run`. Run: `make bench SUITES=live_gauges`.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tools.localdb.migrate import apply_url
from tools.localdb.pgcluster import running_cluster
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext, load_handler

DISTINCT_STATEMENTS = 2000


@dataclass(frozen=True)
class Plan:
    rounds: int


QUICK, FULL = Plan(rounds=15), Plan(rounds=80)


def _container(url: str) -> None:
    from ops import db, metrics
    from ops.config import settings
    from ops.log import logger

    os.environ.update(DATABASE_URL=url, POWERTOOLS_METRICS_NAMESPACE="Bench")
    settings.cache_clear()
    db.reset()
    metrics.reset()
    logger.registered_handler.setStream(io.StringIO())
    logger.setLevel("ERROR")


def _prepare(url: str) -> None:
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=60)
    try:
        conn.run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.run(
            "INSERT INTO inbound_events (source, event_type, received_at)"
            " SELECT 's', 'e', now() - g * interval '1 minute' FROM generate_series(1, 20000) g"
        )
        conn.run(
            "INSERT INTO chat_sessions (channel, user_ref, updated_at)"
            " SELECT 'wa', 'u' || g, now() - g * interval '1 minute'"
            " FROM generate_series(1, 20000) g"
        )
        conn.run("ANALYZE")
        for i in range(DISTINCT_STATEMENTS):
            conn.run(f"SELECT {i} AS c{i}")
    finally:
        conn.close()


@contextlib.contextmanager
def _variant(live: Any, name: str) -> Iterator[None]:
    """Patch live_gauges for one variant; restored afterwards."""
    saved = {
        k: getattr(live, k) for k in ("_first_readings", "STATEMENTS_PRESENT_SQL", "ACTIVITY_SQL")
    }
    original = saved["_first_readings"]
    if name == "before":
        live._first_readings = lambda policies: [
            r for r in original(policies) if not any(f.startswith("pg_") for f in r.families)
        ]
    elif name == "no extension":
        live.STATEMENTS_PRESENT_SQL = saved["STATEMENTS_PRESENT_SQL"] + " AND false"
    elif name == "one failing":
        live.ACTIVITY_SQL = saved["ACTIVITY_SQL"].replace("a.in_use)", "a.in_use / 0)")
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(live, key, value)


VARIANTS = ("before", "no extension", "all", "one failing")


def run(quick: bool) -> str:
    from ops import metrics
    from ops.db import Database, get_db

    plan = QUICK if quick else FULL
    load_before, began = os.getloadavg()[0], time.monotonic()
    handler = load_handler("metrics.app.lambda_handler")
    live = sys.modules["metrics.live_gauges"]
    event = proxy_event(method="GET", path="/metrics", resource="/metrics")
    ctx = LambdaContext("metrics", 10)
    calls = [0]
    plain_run = Database.run

    def counted(self: Database, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return plain_run(self, *args, **kwargs)

    handler_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    collect_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    trips: dict[str, int] = {}
    first_trips: dict[str, int] = {}
    families: dict[str, int] = {}
    with running_cluster(shared_preload_libraries="pg_stat_statements") as cluster:
        url = cluster.create_database("bench_live_gauges")
        apply_url(url)
        _prepare(url)
        _container(url)
        with contextlib.redirect_stdout(io.StringIO()):
            for variant in VARIANTS:  # warm: the series cache, the plans, the connection
                with _variant(live, variant):
                    handler(event, ctx)
            Database.run = counted  # type: ignore[method-assign]
            try:
                for variant in VARIANTS:
                    with _variant(live, variant):
                        live.forget_logged()  # no suspects: the first scrape after a failure
                        calls[0] = 0
                        live.collect(get_db())
                        first_trips[variant] = calls[0]
                        calls[0] = 0
                        collected = live.collect(get_db())
                        trips[variant] = calls[0]
                        families[variant] = len(collected.live)
            finally:
                Database.run = plain_run  # type: ignore[method-assign]
            for _ in range(plan.rounds):
                for variant in VARIANTS:
                    with _variant(live, variant):
                        started = time.perf_counter()
                        handler(event, ctx)
                        handler_ms[variant].append((time.perf_counter() - started) * 1000)
                        started = time.perf_counter()
                        live.collect(get_db())
                        collect_ms[variant].append((time.perf_counter() - started) * 1000)
            metrics.reset()  # the scrapes' own request counts: nothing to flush at exit
    load_after, took = os.getloadavg()[0], time.monotonic() - began
    base_h = statistics.median(handler_ms["before"])
    base_c = statistics.median(collect_ms["before"])
    rows = []
    for variant in VARIANTS:
        h, c = statistics.median(handler_ms[variant]), statistics.median(collect_ms[variant])
        rows.append(
            f"| {variant} | {families[variant]} | {first_trips[variant]}, then {trips[variant]} "
            f"| {c:.2f} | {c / base_c:.2f}x "
            f"| {h:.2f} | {h / base_h:.2f}x |"
        )
    return "\n\n".join(
        [
            "## Live gauges: the database's own performance and per-gauge isolation"
            " (issues 18 and 21)",
            f"Throwaway PostgreSQL on 127.0.0.1 (fsync off) with pg_stat_statements loaded and "
            f"{DISTINCT_STATEMENTS:,} distinct statements in it; 20,000 rows in each policy "
            f"table; {'quick' if quick else 'full'} run, {plan.rounds} interleaved rounds, "
            f"medians in ms; {os.cpu_count()} CPUs; machine load (1-min average) "
            f"{load_before:.2f} before, {load_after:.2f} after; suite time {took:.0f} s. "
            "*collect*: `live_gauges.collect` alone; *handler*: the whole `/metrics` "
            "invocation. Ratios against *before* (the live gauges that existed before "
            "issue 21), measured in the same run.",
            "| variant | live families | round trips (first scrape, then each) | collect "
            "| vs before | handler | vs before |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows),
            "*one failing*: one reading fails on the server. At the first scrape that sees it "
            "the batched statement fails and each of its readings is retried in a statement "
            "of its own; from the next scrape on, the container runs that reading alone "
            "(one more round trip). The timings are that steady state: the cost of a scrape "
            "while a gauge stays broken (its family left out and counted). The handler also "
            "stores what it counted: its increments of `live_metric_errors_total` are pending "
            "deltas, so each scrape's database check carries a flush (a write) that the "
            "other variants do not make.",
        ]
    )
