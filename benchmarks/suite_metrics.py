"""Cross-container metrics (issue 3): what recording and flushing add to an invocation, and
what a scrape costs against prometheus_client, in one run against a throwaway PostgreSQL
on 127.0.0.1 (the tests' `running_cluster`, migrations applied).

* Flush cost: the same API invocation (`Api` with one JSON route) without metrics (the
  bare router, `Api()`) and with them (`service_api()`: the HTTP counter and histogram
  recorded, then the flush: one round trip, plus the EMF line); interleaved, p50/p99 of
  each and of the difference. Also the flush alone.
* Render cost: the metrics function's handler for 2,400 samples (label sets of a counter
  and an http_request_duration_seconds histogram) against `prometheus_client.
  generate_latest` on an in-memory registry holding the same series (`_created` samples
  disabled, so both print 2,400 samples). Worst case: 16 containers in 16 shards wrote
  every series. (How the cost grows with spill rows, every series collided in 4 to 16
  shards, was measured once: benchmarks/README.md, *Concluded investigations*.)

The health suite measures the recording path's import (cold start against Powertools
Logger + pg8000.native, and no prometheus_client or boto3 on it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmarks.lambda_variants import database
from benchmarks.stats import nearest_rank, verdict
from tests.support.db import SQL, runner
from tests.support.metrics import truncate_metrics
from tests.support.runtime import reset_runtime
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext, load_handler

SAMPLES = 2400


def _label_sets() -> int:
    """A label set: a counter sample and a histogram's buckets, +Inf, _count and _sum."""
    from ops.metrics.catalogue import HTTP_BUCKETS

    return SAMPLES // (1 + len(HTTP_BUCKETS) + 3)


LABEL_SETS = _label_sets()
TARGET_FLUSH_P50_MS = 0.5
TARGET_FLUSH_P99_MS = 1.0
TARGET_RENDER_RATIO = 0.5


@dataclass(frozen=True)
class Plan:
    invocations: int  # flush cost, per variant
    render_rounds: int


QUICK = Plan(invocations=400, render_rounds=15)
FULL = Plan(invocations=4000, render_rounds=60)


def _new_container(**env: str) -> None:
    """Environment for this process as a fresh Lambda container would see it."""
    os.environ.update(env)
    reset_runtime()


def _quiet_logger() -> None:
    from ops.log import logger

    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(io.StringIO())
    logger.setLevel("WARNING")


# -- flush cost --------------------------------------------------------------------------


def _bench_api(instrument: bool) -> Callable[..., Any]:
    from ops.api import Api, Request, Response, json_response
    from ops.wiring import service_api

    app = service_api() if instrument else Api()

    @app.get("/bench")
    def bench(_: Request) -> Response:
        return json_response(200, {"status": "ok"})

    return app.lambda_handler


def flush_cost(url: str, sql: SQL, plan: Plan) -> tuple[str, dict[str, float]]:
    from ops.metrics import catalogue as m
    from ops.metrics import flush

    truncate_metrics(sql)
    _new_container(
        DATABASE_URL=url, POWERTOOLS_METRICS_NAMESPACE="Bench", METRICS_FLUSH_INTERVAL_S="0"
    )
    plain, instrumented = _bench_api(False), _bench_api(True)
    event = proxy_event(method="GET", path="/bench", resource="/bench")
    # A context per invocation: time bounds fit what is left of its deadline (10 s after it).
    timings: dict[str, list[float]] = {"plain": [], "metrics": [], "flush": []}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):  # EMF lines: emitted (they are part of the cost)
        for _ in range(50):  # warm: connection open, plpgsql plan cached
            plain(event, LambdaContext("bench", 10))
            instrumented(event, LambdaContext("bench", 10))
        for _ in range(plan.invocations):
            for name, handler in (("plain", plain), ("metrics", instrumented)):
                ctx = LambdaContext("bench", 10)
                started = time.perf_counter()
                handler(event, ctx)
                timings[name].append((time.perf_counter() - started) * 1000)
            m.HTTP_REQUESTS.labels(method="GET", route="/bench", status="200").inc()
            m.HTTP_REQUEST_DURATION.labels(method="GET", route="/bench").observe(0.001)
            started = time.perf_counter()
            ok = flush()
            timings["flush"].append((time.perf_counter() - started) * 1000)
            if not ok:
                raise RuntimeError("flush failed during the benchmark")
            sink.seek(0)
            sink.truncate()
    added = [b - a for a, b in zip(timings["plain"], timings["metrics"], strict=True)]
    stats = {
        "plain_p50": nearest_rank(timings["plain"], 50),
        "plain_p99": nearest_rank(timings["plain"], 99),
        "metrics_p50": nearest_rank(timings["metrics"], 50),
        "metrics_p99": nearest_rank(timings["metrics"], 99),
        "added_p50": nearest_rank(timings["metrics"], 50) - nearest_rank(timings["plain"], 50),
        "added_p99": nearest_rank(timings["metrics"], 99) - nearest_rank(timings["plain"], 99),
        "pairwise_p50": nearest_rank(added, 50),
        "flush_p50": nearest_rank(timings["flush"], 50),
        "flush_p99": nearest_rank(timings["flush"], 99),
    }
    table = "\n".join(
        [
            f"{plan.invocations} invocations per variant, interleaved, with "
            "`METRICS_FLUSH_INTERVAL_S=0` (a flush every invocation: the costliest setting); ms.",
            "",
            "| invocation | p50 | p99 |",
            "|---|---|---|",
            f"| without metrics (bare `Api()`) | {stats['plain_p50']:.3f} "
            f"| {stats['plain_p99']:.3f} |",
            f"| with metrics (record + flush + EMF line) | {stats['metrics_p50']:.3f} "
            f"| {stats['metrics_p99']:.3f} |",
            f"| **added by metrics** | **{stats['added_p50']:.3f}** "
            f"| **{stats['added_p99']:.3f}** |",
            f"| `flush()` alone (2 series deltas + EMF) | {stats['flush_p50']:.3f} "
            f"| {stats['flush_p99']:.3f} |",
            "",
            f"Median of the per-pair differences: {stats['pairwise_p50']:.3f} ms.",
        ]
    )
    return table, stats


# -- render cost -------------------------------------------------------------------------

# Observations that land one in each of the eight buckets and one above them.
HTTP_SAMPLE_S = (0.005, 0.02, 0.07, 0.15, 0.3, 0.7, 1.5, 3.0, 9.0)


def _fill_store(url: str, sql: SQL, shards: int) -> None:
    """200 label sets written by `shards` containers in turn, one per shard."""
    from ops.metrics import catalogue as m
    from ops.metrics import current, flush

    truncate_metrics(sql)
    for shard in range(shards):
        _new_container(DATABASE_URL=url, POWERTOOLS_METRICS_NAMESPACE="")
        current().outbox.shard = shard
        for i in range(LABEL_SETS):
            m.HTTP_REQUESTS.labels(method="GET", route=f"/r/{i}", status="200").inc(3)
            child = m.HTTP_REQUEST_DURATION.labels(method="GET", route=f"/r/{i}")
            for value in HTTP_SAMPLE_S:
                child.observe(value)
        # A failed flush keeps its deltas pending; on a loaded machine the first flush of
        # 1,760 new series can overrun its statement timeout, so try again a few times.
        if not any(flush() for _ in range(5)):
            raise RuntimeError("flush failed while filling the store")


def _client_registry() -> Callable[[], bytes]:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from ops.metrics import catalogue as m

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    counter = Counter("http_requests", "x", ("method", "route", "status"), registry=registry)
    histogram = Histogram(
        "http_request_duration_seconds",
        "x",
        ("method", "route"),
        buckets=m.HTTP_BUCKETS,
        registry=registry,
    )
    for i in range(LABEL_SETS):
        counter.labels("GET", f"/r/{i}", "200").inc(3)
        for value in HTTP_SAMPLE_S:
            histogram.labels("GET", f"/r/{i}").observe(value)
    return lambda: generate_latest(registry)


def _count_samples(text: str, prefixes: tuple[str, ...]) -> int:
    """The benchmark's samples, not those of the scrapes' own requests."""
    return sum(
        1
        for line in text.splitlines()
        if line.startswith(prefixes) and 'route="/metrics"' not in line
    )


def render_cost(url: str, sql: SQL, plan: Plan) -> tuple[str, dict[str, float]]:
    from ops.db import get_db
    from ops.metrics import exposition
    from ops.metrics.totals import read_totals

    baseline = _client_registry()
    handler = load_handler("metrics.app.lambda_handler")
    event = proxy_event(method="GET", path="/metrics", resource="/metrics")
    ctx = partial(LambdaContext, "metrics", 10)  # a fresh deadline per invocation
    prefixes = ("http_requests_total{", "http_request_duration_seconds_")
    rows = []
    stats: dict[str, float] = {}
    scenarios = (  # (name, label, containers/shards)
        ("fleet16", "16 containers in 16 shards wrote every series in the last minutes", 16),
        ("one", "1 container", 1),
    )
    for key, label, shards in scenarios:
        _fill_store(url, sql, shards)
        _new_container(DATABASE_URL=url, POWERTOOLS_METRICS_NAMESPACE="Bench")
        _quiet_logger()
        with contextlib.redirect_stdout(io.StringIO()):
            handler(event, ctx())  # a new metrics container: compacts (if due) on its first scrape
        values_rows = sql("SELECT count(*) FROM metric_values")[0][0]
        handler_ms, client_ms, render_ms = [], [], []
        with contextlib.redirect_stdout(io.StringIO()):
            response = handler(event, ctx())
            samples = _count_samples(body := response["body"], prefixes)
            client_samples = _count_samples(baseline().decode(), prefixes)
            if samples != client_samples:
                got = f"{samples} samples rendered ({response['statusCode']}: {body[:300]!r})"
                raise RuntimeError(f"{label}: {got}, {client_samples} by the client")
            totals = read_totals(get_db())
            for _ in range(3):
                handler(event, ctx())
                baseline()
            for _ in range(plan.render_rounds):
                context = ctx()
                started = time.perf_counter()
                handler(event, context)
                handler_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                baseline()
                client_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                exposition.render(totals, {}, openmetrics=False)
                render_ms.append((time.perf_counter() - started) * 1000)
        h, c, r = (statistics.median(x) for x in (handler_ms, client_ms, render_ms))
        stats[key] = h / c
        rows.append(
            f"| {label} | {values_rows:,} | {samples:,} | {h:.2f} | {r:.2f} | {c:.2f} "
            f"| **{h / c:.2f}x** |"
        )
    table = "\n".join(
        [
            f"Medians of {plan.render_rounds} interleaved rounds; ms.",
            "",
            "| store | value rows | samples | handler | render "
            "| generate_latest | handler / generate_latest |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    return table, stats


# -- the suite ---------------------------------------------------------------------------


def run(quick: bool) -> str:
    from ops.db import connect_url

    plan = QUICK if quick else FULL
    _quiet_logger()
    with database() as url:
        conn = connect_url(url, timeout_s=30)
        try:
            flush_table, f = flush_cost(url, runner(conn), plan)
            render_table, r = render_cost(url, runner(conn), plan)
        finally:
            conn.close()
    targets = "\n".join(
        [
            "| target | measured | limit | result |",
            "|---|---|---|---|",
            f"| p50 added to an invocation by metrics, interval 0 (loopback DB) "
            f"| {f['added_p50']:.3f} ms "
            f"| {TARGET_FLUSH_P50_MS} ms | {verdict(f['added_p50'] <= TARGET_FLUSH_P50_MS)} |",
            f"| p99 added to an invocation by metrics, interval 0 (loopback DB) "
            f"| {f['added_p99']:.3f} ms "
            f"| {TARGET_FLUSH_P99_MS} ms | {verdict(f['added_p99'] <= TARGET_FLUSH_P99_MS)} |",
            *(
                f"| `/metrics` for 2,400 samples vs generate_latest, {what} | {r[key]:.2f}x "
                f"| {TARGET_RENDER_RATIO}x | {verdict(r[key] <= TARGET_RENDER_RATIO)} |"
                for key, what in (
                    ("fleet16", "16 containers in 16 shards wrote every series (worst case)"),
                    ("one", "1 container"),
                )
            ),
        ]
    )
    return "\n\n".join(
        [
            f"{'Quick' if quick else 'Full'} run.",
            "### Targets",
            targets,
            "### Flush cost per invocation",
            flush_table,
            "### `/metrics` render cost",
            render_table,
        ]
    )
