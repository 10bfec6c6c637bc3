"""1,000 container identities flushing metrics through pgbouncer (issues 13 and 23).

Identities are multiplexed over a few worker processes (benchmarks/fleet_worker.py): each
has its own pending deltas, outbox, flush clock and connection, serves a Poisson stream of
invocations through the real `ops.api.Api` handler (a few at the production rate, the rest
slower: the machine's budget), is born, and dies by "SIGTERM" (its
shutdown flush) or "SIGKILL" (its connection dropped, nothing flushed). At the end of a
phase each worker process gets a real SIGTERM: every identity alive does its shutdown flush.
Every connection goes through Debian's pgbouncer in transaction mode (tools.localdb.pgbouncer).

Measured per phase, over a steady window, on each PostgreSQL cluster (the application's, and
the metrics database's when the phase has one): CPU of the postmaster and all its children
(/proc), WAL bytes (`pg_current_wal_lsn`), write transactions (xids), backends waiting on a
lock (sampled); per identity: its flushes (each a write) against the bound of issue 23 item
1, flush latencies, what it served and which numbered batch each invocation joined.
Exactness: the cursor row (`metric_flush_cursors.seq`) of each identity says which of its
invocations the store holds; the store's total must be what was served minus what
SIGKILLed identities held, `/metrics` must serve the store's total, SIGTERMed ones lose none.

Run: `make bench SUITES=fleet` (`--quick`: 200 identities, short phases). BENCH_FLEET_RATE
(invocations/s per identity) and BENCH_FLEET_IDENTITIES override the plan.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.fleet_plan import (
    FRESH_S,
    HOT_PER_WORKER,
    MAX_CLIENT_CONN,
    PROD_RATE,
    Phase,
    Plan,
)
from tests.support.runtime import call_api
from tools import PYTHONPATH, ROOT


def _phases() -> tuple[Phase, ...]:
    from ops.config import SCRAPE_INTERVAL_S

    scrape = 5.0  # recommended: T + scrape + an invocation gap <= FRESH_S
    interval = FRESH_S - scrape - 1.0
    return (
        Phase("shipped defaults", 1.0, SCRAPE_INTERVAL_S, False),
        Phase("recommended interval, one database", interval, scrape, False),
        Phase("recommended", interval, scrape, True),
    )


def _plan(quick: bool) -> Plan:
    env = os.environ.get
    size = int(env("BENCH_FLEET_IDENTITIES") or (200 if quick else 1000))
    rate = float(env("BENCH_FLEET_RATE") or 0.25)
    if quick:
        return Plan(size, 2, rate, 2 * HOT_PER_WORKER, 120.0, 40.0, 15.0, 3.0, _phases())
    return Plan(size, 4, rate, 4 * HOT_PER_WORKER, 600.0, 150.0, 40.0, 5.0, _phases())


# -- measuring a cluster -----------------------------------------------------------------


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(f) for f in fields[11:15])  # utime stime cutime cstime


def tree_cpu_s(root: int) -> float:
    """CPU seconds of `root`, its live children and its reaped children (/proc)."""
    ticks = _ticks(root)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == root:
                ticks += _ticks(int(entry.name))
    return ticks / os.sysconf("SC_CLK_TCK")


class Probe:
    """Readings of one cluster over a direct (not pooled) admin connection."""

    def __init__(self, cluster: Any, dbname: str) -> None:
        from ops.db import connect_url

        self.conn = connect_url(cluster.url("postgres"), timeout_s=30)
        self.dbname = dbname
        self.postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        self.lock_samples: list[int] = []

    def snapshot(self) -> dict[str, Any]:
        xid, commits, wal = self.conn.run(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
            "(SELECT xact_commit FROM pg_stat_database WHERE datname = :db), "
            "pg_current_wal_lsn()::text",
            db=self.dbname,
        )[0]
        return {
            "at": time.monotonic(),
            "xid": xid,
            "commits": commits,
            "wal": wal,
            "cpu_s": tree_cpu_s(self.postmaster),
            "wall": time.time(),
        }

    def sample_locks(self) -> None:
        ((waiting,),) = self.conn.run(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        self.lock_samples.append(waiting)

    def delta(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        wal = self.conn.run(f"SELECT pg_wal_lsn_diff('{b['wal']}', '{a['wal']}')::bigint")[0][0]
        return {
            "s": b["at"] - a["at"],
            "xids": b["xid"] - a["xid"],
            "commits": b["commits"] - a["commits"],
            "wal": int(wal),
            "cpu_s": b["cpu_s"] - a["cpu_s"],
        }


@contextlib.contextmanager
def _database(name: str) -> Iterator[tuple[Any, Any]]:
    """A cluster on the tests' harness, migrated, behind pgbouncer in transaction mode."""
    from tools.localdb.migrate import apply_url
    from tools.localdb.pgbouncer import PgBouncer
    from tools.localdb.pgcluster import running_cluster

    with running_cluster(max_connections="100") as cluster:
        apply_url(cluster.create_database(name))
        bouncer = PgBouncer(cluster, name, max_client_conn=MAX_CLIENT_CONN)
        bouncer.start()
        try:
            yield cluster, bouncer
        finally:
            bouncer.stop()


# -- one phase ---------------------------------------------------------------------------


def _sql(url: str, query: str) -> list[list[Any]]:
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=30)
    try:
        rows: list[list[Any]] = conn.run(query)
        return rows
    finally:
        conn.close()


SAMPLE = re.compile(r'^http_requests_total\{method="[A-Z]+",route="(/items[^"]*)",[^}]*\} (\S+)$')


def _scrape(handler: Any) -> tuple[float, str]:
    """One `/metrics` through the metrics function's handler in this process: (ms, body)."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status, _, body = call_api(handler, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return (time.perf_counter() - started) * 1000, str(body)


def run_phase(phase: Phase, plan: Plan, dbs: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from ops import db, metrics
    from ops.config import settings
    from ops.log import logger
    from tools.runtime.handler import load_handler

    app_cluster, app_bouncer = dbs["app"]
    store_cluster, store_bouncer = dbs["metrics"] if phase.separate else dbs["app"]
    store_direct = store_cluster.url("fleet_metrics" if phase.separate else "fleet_app")
    _sql(store_direct, "TRUNCATE metric_values, metric_series, metric_flush_cursors")
    env = {
        "DATABASE_URL": app_bouncer.url,
        "METRICS_FLUSH_INTERVAL_S": f"{phase.interval:g}",
        "POWERTOOLS_METRICS_NAMESPACE": "Fleet",
        "AWS_LAMBDA_FUNCTION_NAME": "fleet",
    }
    if phase.separate:
        env["METRICS_DATABASE_URL"] = store_bouncer.url
    start_at = time.time() + 3.0
    outs = [workdir / f"worker-{i}.json" for i in range(plan.workers)]
    workers = []
    for i, out in enumerate(outs):
        share = plan.identities // plan.workers + (i < plan.identities % plan.workers)
        spec = {
            "env": env,
            "identities": share,
            "rate": plan.rate,
            "hot": plan.hot // plan.workers,
            "hot_rate": PROD_RATE,
            "start_at": start_at,
            "lifetime_s": plan.lifetime_s,
            "out": str(out),
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_worker", json.dumps(spec)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": PYTHONPATH},
                stdout=subprocess.DEVNULL,
                stderr=(workdir / f"worker-{i}.log").open("w"),
            )
        )
    os.environ.update(env)  # the scraper: a metrics container in this process
    os.environ.pop("POWERTOOLS_METRICS_NAMESPACE")
    settings.cache_clear()
    db.reset()
    metrics.reset()
    handler = load_handler("metrics.app.lambda_handler")
    logger.registered_handler.setStream(io.StringIO())  # type: ignore[attr-defined]
    logger.setLevel("WARNING")
    probes = {"app": Probe(app_cluster, "fleet_app")}
    if phase.separate:
        probes["metrics"] = Probe(store_cluster, "fleet_metrics")
    while time.time() < start_at:
        time.sleep(0.05)
    began = time.monotonic()
    marks = [
        began + plan.warmup_s + k * (plan.phase_s - plan.warmup_s - plan.tail_s) / 2
        for k in range(3)
    ]
    snaps: dict[str, list[dict[str, Any]]] = {k: [p.snapshot()] for k, p in probes.items()}
    scrapes: list[float] = []
    next_scrape = began + phase.scrape_s
    while (now := time.monotonic()) < began + plan.phase_s:
        if marks and now >= marks[0]:
            marks.pop(0)
            for k, p in probes.items():
                snaps[k].append(p.snapshot())
        if now >= next_scrape:
            next_scrape += phase.scrape_s
            scrapes.append(_scrape(handler)[0])
        if len(snaps["app"]) >= 2 and marks:  # lock waits over the steady window
            for p in probes.values():
                p.sample_locks()
        if any(w.poll() is not None for w in workers):
            raise RuntimeError(f"a fleet worker died; see {workdir}/worker-*.log")
        time.sleep(0.25)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for i, w in enumerate(workers):
        if w.wait(timeout=120) != 0:
            raise RuntimeError(f"fleet worker {i} failed; see {workdir}/worker-{i}.log")
    for k, p in probes.items():
        snaps[k].append(p.snapshot())
    results = [json.loads(out.read_text()) for out in outs]
    # -- exactness --------------------------------------------------------------------------
    cursors = {
        c: int(s) for c, s in _sql(store_direct, "SELECT container, seq FROM metric_flush_cursors")
    }
    stored = int(
        _sql(
            store_direct,
            "SELECT coalesce(sum(v.value), 0)::bigint FROM metric_values v"
            " JOIN metric_series s ON s.id = v.series_id WHERE s.family ="
            " 'http_requests_total' AND s.labels LIKE '%route=\"/items%'",
        )[0][0]
    )
    os.environ["METRICS_NEW_SERIES_HOLD_S"] = "0"
    settings.cache_clear()
    body = _scrape(handler)[1]
    os.environ.pop("METRICS_NEW_SERIES_HOLD_S")
    settings.cache_clear()
    exposed = int(sum(float(m.group(2)) for m in map(SAMPLE.match, body.splitlines()) if m))
    ids = [i for r in results for i in r["identities"]]
    lost = {"term": 0, "kill": 0, "end": 0}
    over_bound = []
    for i in ids:
        seq = cursors.get(i["container"], 0)
        covered = max((n for s, n in i["notes"] if int(s) <= seq), default=0)
        lost[i["end"]] += i["served"] - covered
        bound = math.floor((i["died"] - i["born"]) / phase.interval) + 2
        if i["jobs"] > bound:
            over_bound.append((i["jobs"], bound))
    series = int(_sql(store_direct, "SELECT count(*) FROM metric_series")[0][0])
    window = {
        k: [p.delta(s[1], s[3]), p.delta(s[1], s[2]), p.delta(s[2], s[3]), p.delta(s[0], s[4])]
        for (k, s), p in zip(snaps.items(), probes.values(), strict=True)
    }
    for p in probes.values():
        p.conn.close()
    a, b = (snaps["app"][k]["wall"] - start_at for k in (1, 3))
    per_s = [sum(c) for c in itertools.zip_longest(*(r["per_s"] for r in results), fillvalue=0)]
    return {
        "phase": asdict(phase),
        "window": window,
        "served": sum(i["served"] for i in ids),
        "served_window": sum(per_s[math.ceil(a) : math.floor(b)])
        * (b - a)
        / (math.floor(b) - math.ceil(a)),
        "stored": stored,
        "exposed": exposed,
        "lost": lost,
        "over_bound": over_bound,
        "identities": len(ids),
        "ends": {e: sum(i["end"] == e for i in ids) for e in lost},
        "jobs": sum(i["jobs"] for i in ids),
        "hot": {k: sum(i[k] for i in ids if i["hot"]) for k in ("served", "jobs", "rows")},
        "series_rows": sum(r["series_rows"] for r in results),
        "flush_ms": sorted(ms for r in results for ms in r["flush_ms"]),
        "invoke_ms": sorted(ms for r in results for ms in r["invoke_ms"]),
        "late": sum(r["late"] for r in results),
        "max_lag_ms": max(r["max_lag_ms"] for r in results),
        "out": {k: sum(r["out"][k] for r in results) for k in results[0]["out"]},
        "emf_keys": len({k for r in results for k in r["emf_keys"]}),
        "series": series,
        "scrape_ms": scrapes,
        "lock_samples": {k: p.lock_samples for k, p in probes.items()},
    }


# -- the suite ---------------------------------------------------------------------------


def run(quick: bool) -> str:
    plan = _plan(quick)
    load = [os.getloadavg()[0]]
    workdir = ROOT / "benchmarks" / ".work" / "fleet"
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    with contextlib.ExitStack() as stack:
        dbs = {"app": stack.enter_context(_database("fleet_app"))}
        if any(p.separate for p in plan.phases):
            dbs["metrics"] = stack.enter_context(_database("fleet_metrics"))
        for phase in plan.phases:
            print(f"   {phase.name}", file=sys.stderr, flush=True)
            results.append(run_phase(phase, plan, dbs, workdir))
            load.append(os.getloadavg()[0])
    raw = {"plan": asdict(plan), "phases": results, "load": load}
    (workdir / "results.json").write_text(json.dumps(raw))
    from benchmarks.fleet_report import report

    return report(plan, results, load)
