"""Retention function vs the naive single DELETE, under a live writer (issues 4 and 10).

One throwaway PostgreSQL (tools.pgcluster) in a temporary folder. Two template
databases are built once: `inbound_events` as a plain table with its received_at
index, and the same table partitioned by day; each holds N rows spread evenly
over 60 days (half older than the 30-day policy) plus 10,000 chat sessions. Every
measured prune gets a fresh copy of its template (CREATE DATABASE ... TEMPLATE),
so both methods start from identical pages.

Per prune: a writer process (single-row INSERTs into inbound_events alternating
with chat_sessions UPDATEs, each its own transaction, paced at 200 ops/s with no
catch-up after a stall) runs undisturbed for a baseline window, then during the
prune. Measured: wall time, rows/s, the longest transaction (naive: the DELETE
itself; function: every transaction and autocommit statement it issues, timed
around the client call, so an upper bound), WAL bytes (pg_current_wal_insert_lsn
difference over the prune, the writer's few KB/s included), and the writer's
throughput and p50/p99 latency in each window. Where the function's time goes: every
statement it sends is timed around the client call and filed under its phase (BEGIN
with its SET LOCALs, window DELETE, exact probe, exact DELETE, progress record,
COMMIT, the rest: lease, catalog, audit entries, metrics flush).

    python -m benchmarks retention            # 5,000,000 rows
    python -m benchmarks retention --quick    # 200,000 rows, about a minute
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tools  # noqa: F401 - puts the ops layer on sys.path (also in the writer process)
from benchmarks.stats import verdict
from ops.retention_policies import DEFAULT_BATCH_SIZE
from tools import ROOT

QUICK_ROWS = 200_000
FULL_ROWS = 5_000_000
SESSIONS = 10_000
DAYS = 60
WRITER_OPS_PER_S = 200.0
REPEATS = 5  # full runs: each prune five times (the machine is shared and noisy)
POLICIES = json.dumps(
    [
        {"table": "inbound_events", "column": "received_at", "maxAgeDays": 30},
        {"table": "chat_sessions", "column": "updated_at", "maxAgeDays": 90},
    ]
)
NAIVE_SQL = "DELETE FROM inbound_events WHERE received_at < now() - interval '30 days'"

# Targets (issue 4, tightened by issue 10: every repetition within 1.5x).
MAX_TRANSACTION_MS = 100.0
MAX_WALL_VS_NAIVE = 1.5
# The writer keeps 100% of its rate: at most one write short of its baseline pace over the
# prune (a window boundary can cut one; a 0.2 s prune holds only 40 writes at 200/s).
MAX_WRITES_LOST = 1.0
MIN_PARTITIONED_SPEEDUP = 3.0
MAX_PARTITIONED_WAL_SHARE = 1 / 20


# -- the writer (its own process: the prune's Python must not steal its GIL) ---------------
def _connect(url: str, statement_timeout_ms: int = 3_600_000) -> Any:
    from ops.db import connect_url

    return connect_url(url, timeout_s=600, statement_timeout_ms=statement_timeout_ms)


def writer_main(url: str, stop: Any, out: Any, ops_per_s: float) -> None:
    """Paced single-row writes; sends [(start, latency_s), ...] when told to stop."""
    samples: list[tuple[float, float]] = []
    try:
        _write(url, stop, ops_per_s, samples)
        out.put(samples)
    except Exception as exc:  # the parent reports it instead of waiting for samples
        out.put(f"writer failed: {exc}")


def _write(url: str, stop: Any, ops_per_s: float, samples: list[tuple[float, float]]) -> None:
    import random

    conn = _connect(url, statement_timeout_ms=60_000)
    interval, rng = 1.0 / ops_per_s, random.Random(7)
    next_at, n = time.monotonic(), 0
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        start = time.monotonic()
        if n % 2:
            conn.run(
                "UPDATE chat_sessions SET updated_at = now(), "
                "state = jsonb_build_object('n', CAST(:n AS int)) WHERE id = :id",
                n=n,
                id=rng.randint(1, SESSIONS),
            )
        else:
            conn.run(
                "INSERT INTO inbound_events (source, event_type, payload) "
                "VALUES ('bench', 'message.received', jsonb_build_object('n', CAST(:n AS int)))",
                n=n,
            )
        samples.append((start, time.monotonic() - start))
        n += 1
        next_at = max(next_at + interval, time.monotonic())  # no catch-up burst after a stall
    conn.close()


@dataclass
class WriterWindow:
    ops_per_s: float
    p50_ms: float
    p99_ms: float


def _window(samples: list[tuple[float, float]], start: float, end: float) -> WriterWindow:
    lat = sorted(s[1] * 1000 for s in samples if start <= s[0] < end)
    if not lat:
        return WriterWindow(0.0, float("nan"), float("nan"))
    return WriterWindow(
        ops_per_s=len(lat) / (end - start),
        p50_ms=lat[len(lat) // 2],
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    )


# -- data -----------------------------------------------------------------------------------------
def _load(conn: Any, rows: int) -> None:
    conn.run(
        "INSERT INTO inbound_events (source, event_type, payload, received_at) "
        "SELECT 'whatsapp', 'message.received', jsonb_build_object('n', g, 'text', md5(g::text)), "
        f"now() - interval '{DAYS} days' + (g * (interval '{DAYS} days' / :rows)) "
        "FROM generate_series(1, :rows) g",
        rows=rows,
    )
    conn.run(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) "
        "SELECT 'whatsapp', 'user-' || g, now() - make_interval(mins => g) "
        "FROM generate_series(1, :n) g",
        n=SESSIONS,
    )
    conn.run("VACUUM ANALYZE inbound_events")
    conn.run("VACUUM ANALYZE chat_sessions")


def _partition_by_day(conn: Any) -> None:
    """inbound_events partitioned by day (created before the migrations, which then add
    its received_at index and leave the table as it is)."""
    conn.run(
        "CREATE TABLE inbound_events (id bigint GENERATED ALWAYS AS IDENTITY, "
        "source text NOT NULL, event_type text NOT NULL, "
        "payload jsonb NOT NULL DEFAULT '{}'::jsonb, "
        "received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, received_at)) "
        "PARTITION BY RANGE (received_at)"
    )
    today = conn.run("SELECT date_trunc('day', now())")[0][0]
    for n in range(-DAYS - 1, 3):
        conn.run(
            f"CREATE TABLE inbound_events_d{n + DAYS + 1:03d} PARTITION OF inbound_events "
            f"FOR VALUES FROM ('{today.isoformat()}'::timestamptz + interval '{n} days') "
            f"TO ('{today.isoformat()}'::timestamptz + interval '{n + 1} days')"
        )


def _build_template(cluster: Any, name: str, rows: int, partitioned: bool) -> None:
    from tools.migrate import apply_url

    url = cluster.create_database(name)
    conn = _connect(url)
    try:
        if partitioned:
            _partition_by_day(conn)
        apply_url(url)
        _load(conn, rows)
    finally:
        conn.close()


# -- one measured prune ---------------------------------------------------------------------------
@dataclass
class Prune:
    scenario: str
    method: str
    rows: int  # removed: deleted row by row or in a dropped partition
    wall_s: float
    longest_tx_ms: float
    wal_bytes: int
    cpu_s: float  # CPU the prune cost: every process of the cluster, and this process
    baseline: WriterWindow
    during: WriterWindow
    transactions: int = 1
    tx_p99_ms: float = 0.0
    partitions_dropped: int = 0
    writer_wal_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0

    @property
    def writes_lost(self) -> float:
        """Writes short of the writer's baseline pace over the prune."""
        return (self.baseline.ops_per_s - self.during.ops_per_s) * self.wall_s

    @property
    def writer_share(self) -> float:
        return self.during.ops_per_s / self.baseline.ops_per_s if self.baseline.ops_per_s else 0.0


@contextlib.contextmanager
def _timed_database_calls() -> Iterator[list[float]]:
    """Durations of every transaction and autocommit statement of ops.db.Database."""
    from ops.db import Database

    durations: list[float] = []
    depth = {"n": 0}
    real_tx, real_run = Database.transaction, Database.run

    @contextlib.contextmanager
    def transaction(self: Database, **timeouts: Any) -> Iterator[Any]:
        started = time.perf_counter()
        depth["n"] += 1
        try:
            with real_tx(self, **timeouts) as conn:
                yield conn
        finally:
            depth["n"] -= 1
            durations.append((time.perf_counter() - started) * 1000)

    def run(self: Database, sql: str, **kw: Any) -> Any:
        if depth["n"]:
            return real_run(self, sql, **kw)
        started = time.perf_counter()
        try:
            return real_run(self, sql, **kw)
        finally:
            durations.append((time.perf_counter() - started) * 1000)

    Database.transaction, Database.run = transaction, run  # type: ignore[method-assign]
    try:
        yield durations
    finally:
        Database.transaction, Database.run = real_tx, real_run  # type: ignore[method-assign]


def _naive(url: str) -> dict[str, Any]:
    conn = _connect(url)
    try:
        started = time.perf_counter()
        conn.run(NAIVE_SQL)
        elapsed = time.perf_counter() - started
        return {"longest_ms": elapsed * 1000, "tx": [elapsed * 1000]}
    finally:
        conn.close()


PHASES = (  # matched on the statement as sent (prepared ones have $n placeholders)
    ("BEGIN + SET LOCAL", lambda q: q.startswith("BEGIN")),
    ("window DELETE", lambda q: q.startswith("DELETE") and "cutoff" not in q),
    ("exact probe", lambda q: q.startswith("SELECT") and "OFFSET :skip" in q),
    ("exact DELETE", lambda q: q.startswith(("DELETE", "WITH gone"))),
    ("progress record", lambda q: q.startswith("WITH lease")),
    ("COMMIT", lambda q: q.startswith("COMMIT")),
)
OTHER_PHASE = "other (lease, catalog, audit, metrics flush)"


@contextlib.contextmanager
def _timed_phases() -> Iterator[dict[str, list[float]]]:
    """Client-side time of every statement the function sends, by phase (ms)."""
    import pg8000.native

    phases: dict[str, list[float]] = {}
    plain, prepared = pg8000.native.Connection.run, pg8000.native.PreparedStatement.run

    def timed(real: Any, sql: Callable[[Any, tuple[Any, ...]], str]) -> Any:
        def run(self: Any, *args: Any, **params: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(self, *args, **params)
            finally:
                q = sql(self, args).lstrip()
                name = next((n for n, match in PHASES if match(q)), OTHER_PHASE)
                phases.setdefault(name, []).append((time.perf_counter() - started) * 1000)

        return run

    pg8000.native.Connection.run = timed(plain, lambda _, args: args[0])  # type: ignore[method-assign]
    pg8000.native.PreparedStatement.run = timed(prepared, lambda ps, _: ps.statement)  # type: ignore[method-assign]
    try:
        yield phases
    finally:
        pg8000.native.Connection.run = plain  # type: ignore[method-assign]
        pg8000.native.PreparedStatement.run = prepared  # type: ignore[method-assign]


def _function(url: str) -> dict[str, Any]:
    from ops import db as ops_db
    from ops.config import settings
    from tools.runtime import LambdaContext

    os.environ.update(DATABASE_URL=url, RETENTION_POLICIES=POLICIES)
    settings.cache_clear()
    ops_db.reset()
    with _timed_database_calls() as durations, _timed_phases() as phases:
        result = _handler()({"runId": f"bench-{time.time_ns()}"}, LambdaContext("bench", 900))
    ops_db.reset()
    tables = {t["table"]: t for t in result["tables"]}
    events = tables["inbound_events"]
    assert result["status"] == "completed", result
    return {
        "longest_ms": max(durations),
        "tx": durations,
        "partitions": len(events["partitionsDropped"]),
        "batches": events["batches"],
        "phases": phases,
    }


def _handler() -> Any:
    """The retention handler, imported once (a cold start is not part of the prune)."""
    from tools.runtime import load_handler

    return load_handler(ROOT / "functions" / "retention")


# Rows a prune must remove (the writer only adds recent ones): counted before and after
# against one fixed instant, the same way for both methods.
EXPIRED_SQL = "SELECT count(*) FROM inbound_events WHERE received_at < :before"


def _lsn(conn: Any) -> str:
    return str(conn.run("SELECT pg_current_wal_insert_lsn()")[0][0])


def _wal_since(conn: Any, lsn: str) -> int:
    return int(conn.run("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :l)", l=lsn)[0][0])


def _cluster_cpu_s(cluster: Any) -> float:
    """CPU seconds used so far by the cluster: the postmaster, its live children (the writer's
    and the prune's backends, WAL writer, checkpointer, autovacuum) and, through the
    postmaster's cutime/cstime, the children it has reaped (a backend whose connection
    closed). Unlike wall time, it does not count waiting for a CPU on a shared machine."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])

    def fields(pid: int) -> list[str]:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...

    ticks = 0
    own = fields(postmaster)
    ticks += sum(int(own[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            child = fields(int(entry.name))
            if int(child[1]) == postmaster:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _measure(cluster: Any, scenario: str, method: str, baseline_s: float) -> Prune:
    """`scenario` names the template database the prune runs on a fresh copy of."""
    template, name = scenario, f"{scenario}_{method}"
    admin = _connect(cluster.url("postgres"))
    admin.run(f'DROP DATABASE IF EXISTS "{name}"')
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    url = cluster.url(name)
    conn = _connect(url)
    before = conn.run("SELECT now() - interval '29 days'")[0][0]
    expired_before = int(conn.run(EXPIRED_SQL, before=before)[0][0])
    conn.run("CHECKPOINT")
    stop, out = mp.get_context("spawn").Event(), mp.get_context("spawn").Queue()
    writer = mp.get_context("spawn").Process(
        target=writer_main, args=(url, stop, out, WRITER_OPS_PER_S), daemon=True
    )
    _handler()
    try:
        writer.start()
        time.sleep(1.0)  # writer connected and paced
        base_start, base_lsn = time.monotonic(), _lsn(conn)
        time.sleep(baseline_s)
        base_end = time.monotonic()
        writer_wal_rate = _wal_since(conn, base_lsn) / (base_end - base_start)
        lsn = _lsn(conn)
        cpu_before = _cluster_cpu_s(cluster) + time.process_time()
        started = time.monotonic()
        outcome = (_naive if method == "naive" else _function)(url)
        ended = time.monotonic()
        wal = _wal_since(conn, lsn)
        removed = expired_before - int(conn.run(EXPIRED_SQL, before=before)[0][0])
        time.sleep(0.5)
        # After the pause: the prune's backends have exited and been reaped into the
        # postmaster's cutime (the writer's backend adds ~5 ms of CPU, for both methods).
        cpu = _cluster_cpu_s(cluster) + time.process_time() - cpu_before
        stop.set()
        samples = out.get(timeout=60)
        if isinstance(samples, str):
            raise RuntimeError(samples)
        writer.join(30)
    finally:
        stop.set()
        if writer.is_alive():
            writer.kill()
        conn.close()
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
    tx = sorted(outcome["tx"])
    return Prune(
        scenario=scenario,
        method=method,
        rows=removed,
        wall_s=ended - started,
        longest_tx_ms=outcome["longest_ms"],
        wal_bytes=wal,
        cpu_s=cpu,
        baseline=_window(samples, base_start, base_end),
        during=_window(samples, started, ended),
        transactions=len(tx),
        tx_p99_ms=tx[min(len(tx) - 1, int(len(tx) * 0.99))],
        partitions_dropped=int(outcome.get("partitions", 0)),
        writer_wal_bytes=int(writer_wal_rate * (ended - started)),
        extra={"batches": outcome.get("batches"), "phases": outcome.get("phases")},
    )


# -- report ---------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _row(p: Prune) -> str:
    label = "naive `DELETE`" if p.method == "naive" else "retention function"
    return (
        f"| {p.scenario} | {label} | {p.rows:,} | {p.wall_s:.2f} | {p.cpu_s:.2f} | "
        f"{p.rows_per_s:,.0f} | "
        f"{p.longest_tx_ms:.1f} | {p.transactions:,} / {p.tx_p99_ms:.1f} | {_mb(p.wal_bytes)} | "
        f"{p.baseline.ops_per_s:.0f} → {p.during.ops_per_s:.0f} ({p.writer_share:.0%}) | "
        f"{p.baseline.p50_ms:.2f} / {p.baseline.p99_ms:.2f} | "
        f"{p.during.p50_ms:.2f} / {p.during.p99_ms:.2f} |"
    )


def _median(prunes: list[Prune]) -> Prune:
    return sorted(prunes, key=lambda p: p.wall_s)[len(prunes) // 2]


def _paired(
    all_runs: dict[tuple[str, str], list[Prune]], scenario: str, ratio: Callable[..., float]
) -> float:
    """Median over repetitions of `ratio(naive, function)` for runs made back to back: the
    machine is shared, and a busy minute slows both methods of one repetition alike."""
    pairs = zip(all_runs[scenario, "naive"], all_runs[scenario, "function"], strict=True)
    return statistics.median(ratio(naive, function) for naive, function in pairs)


def _phase_table(function: Prune, naive: Prune) -> list[str]:
    """Where the function's time went in its median plain-table run."""
    phases: dict[str, list[float]] = function.extra.get("phases") or {}
    total = sum(sum(v) for v in phases.values())
    order = [name for name, _ in PHASES] + [OTHER_PHASE]
    rows = [
        f"| {name} | {len(phases[name]):,} | {sum(phases[name]):.0f} | "
        f"{statistics.mean(phases[name]):.2f} | {sum(phases[name]) / naive.wall_s / 10:.0f}% |"
        for name in order
        if name in phases
    ]
    outside = function.wall_s * 1000 - total
    return [
        "### Where the function's time goes (plain table, its median run)",
        "",
        "Every statement timed around its client call (so round trips and the client's own "
        "work are in it), by phase; *share of naive*: that phase's total over the naive "
        f"DELETE's wall time ({naive.wall_s:.2f} s) of the same repetition set's median run.",
        "",
        "| phase | statements | total ms | mean ms | share of naive |",
        "|---|---|---|---|---|",
        *rows,
        f"| between statements (Python: batch sizing, logs, handler) | | {outside:.0f} | | "
        f"{outside / naive.wall_s / 10:.0f}% |",
    ]


def _report(
    rows: int, all_runs: dict[tuple[str, str], list[Prune]], quick: bool, setup_s: float
) -> str:
    runs = {key: _median(prunes) for key, prunes in all_runs.items()}
    repeats = len(next(iter(all_runs.values())))
    walls = "; ".join(
        f"{scenario} {method} " + ", ".join(f"{p.wall_s:.2f}" for p in prunes)
        for (scenario, method), prunes in all_runs.items()
    )
    plain_n, plain_f = runs["plain", "naive"], runs["plain", "function"]
    part_n, part_f = runs["partitioned", "naive"], runs["partitioned", "function"]
    wall_ratio = _paired(all_runs, "plain", lambda n, f: f.wall_s / n.wall_s)
    pairs = zip(all_runs["plain", "naive"], all_runs["plain", "function"], strict=True)
    ratios = [f.wall_s / n.wall_s for n, f in pairs]
    pairs = zip(all_runs["plain", "naive"], all_runs["plain", "function"], strict=True)
    cpu_ratios = [f.cpu_s / n.cpu_s for n, f in pairs]
    speedup = _paired(all_runs, "partitioned", lambda n, f: n.wall_s / f.wall_s)
    wal_share = _paired(all_runs, "partitioned", lambda n, f: f.wal_bytes / n.wal_bytes)
    # Worst cases over every run of the function, not just the median ones.
    function_runs = [
        p for (_, method), prunes in all_runs.items() if method == "function" for p in prunes
    ]
    worst_writer = min(p.writer_share for p in function_runs)
    worst_lost = max(p.writes_lost for p in function_runs)
    longest = max(p.longest_tx_ms for p in function_runs)
    size = f"{rows:,} rows" + (" (`--quick`)" if quick else "")
    lines = [
        "## Retention: batched function vs naive single DELETE (issues 4 and 10)",
        "",
        f"`inbound_events` with {size} spread evenly over {DAYS} days (half older than the "
        f"30-day policy), its `received_at` index, and {SESSIONS:,} `chat_sessions`; a writer "
        f"process doing single-row INSERTs and `chat_sessions` UPDATEs at "
        f"{WRITER_OPS_PER_S:.0f} ops/s throughout. Every prune runs on a fresh copy of the same "
        "template database. The function runs through its real handler with the default "
        f"batch size ({DEFAULT_BATCH_SIZE:,} rows at most, aiming at 50 ms a batch). Naive: "
        f"`{NAIVE_SQL}`. Machine: {os.cpu_count()} cores (shared); PostgreSQL from "
        "`tools.pgcluster` (fsync, synchronous_commit and full_page_writes off, so WAL holds "
        "no full-page images and commits do not wait for disk: both lower than in production, "
        f"for both methods alike). Setup (load + templates) took {setup_s:.0f} s. Each prune "
        f"ran {repeats} time(s), alternating which method went first; ratios are medians of "
        "the ratios within each repetition, the measurements table shows each method's run "
        f"with the median wall time (all wall times, s: {walls}).",
        "",
        "### Targets",
        "",
        *(
            [
                "_`--quick` is a smoke run: the targets are set for the full size, where the "
                "per-run and per-partition costs are small next to the rows deleted._",
                "",
            ]
            if quick
            else []
        ),
        "| target | measured | limit | result |",
        "|---|---|---|---|",
        f"| longest transaction (function, any run) | {longest:.1f} ms | "
        f"≤ {MAX_TRANSACTION_MS:.0f} ms | "
        f"{verdict(longest <= MAX_TRANSACTION_MS)} |",
        f"| wall time vs naive (plain table), median | {wall_ratio:.2f}x | "
        f"≤ {MAX_WALL_VS_NAIVE:.1f}x | {verdict(wall_ratio <= MAX_WALL_VS_NAIVE)} |",
        f"| wall time vs naive (plain table), every repetition | "
        f"{', '.join(f'{r:.2f}x' for r in ratios)} | ≤ {MAX_WALL_VS_NAIVE:.1f}x | "
        f"{verdict(max(ratios) <= MAX_WALL_VS_NAIVE)} |",
        f"| (not a target) CPU vs naive (plain table), every repetition: cluster and client "
        f"CPU seconds, which waiting for a CPU does not inflate | "
        f"{', '.join(f'{r:.2f}x' for r in cpu_ratios)} (median "
        f"{statistics.median(cpu_ratios):.2f}x) | | |",
        f"| writer keeps 100% of its rate (function, worst run: writes short of its "
        f"baseline pace over the prune; rate) | {worst_lost:.1f} ({worst_writer:.0%}) | "
        f"≤ {MAX_WRITES_LOST:.0f} write | {verdict(worst_lost <= MAX_WRITES_LOST)} |",
        f"| partitioned: faster than naive | {speedup:.1f}x | ≥ {MIN_PARTITIONED_SPEEDUP:.0f}x | "
        f"{verdict(speedup >= MIN_PARTITIONED_SPEEDUP)} |",
        f"| partitioned: WAL vs naive | 1/{1 / wal_share:.0f} ({wal_share:.3f}) | ≤ 1/20 | "
        f"{verdict(wal_share <= MAX_PARTITIONED_WAL_SHARE)} |",
        "",
        "### Measurements",
        "",
        "| table | method | rows removed | wall s | CPU s | rows/s | longest tx ms "
        "| tx count / p99 ms "
        "| WAL | writer ops/s baseline → during | writer p50/p99 ms baseline | "
        "writer p50/p99 ms during |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(runs[k]) for k in runs),
        "",
        f"The function dropped {part_f.partitions_dropped} whole day partitions and pruned only "
        f"the boundary partition row by row ({part_f.extra['batches']} batches); on the plain "
        f"table it ran {plain_f.extra['batches']} batches. Writer WAL during each prune "
        f"(baseline rate x prune time, included above): plain "
        f"{_mb(plain_n.writer_wal_bytes)} / {_mb(plain_f.writer_wal_bytes)}, partitioned "
        f"{_mb(part_n.writer_wal_bytes)} / {_mb(part_f.writer_wal_bytes)} (naive / function).",
        "",
        *_phase_table(plain_f, plain_n),
        "",
        "Reproduce: `python -m benchmarks retention` (full size) or "
        "`python -m benchmarks retention --quick`.",
    ]
    return "\n".join(lines)


def run(quick: bool) -> str:
    from tools.pgcluster import PgCluster

    rows = QUICK_ROWS if quick else int(os.environ.get("RETENTION_BENCH_ROWS", FULL_ROWS))
    baseline_s = 3.0 if quick else 6.0
    repeats = 1 if quick else REPEATS
    workdir = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    cluster = PgCluster(workdir / "data")
    saved_env = dict(os.environ)
    try:
        cluster.init()
        cluster.start()
        cluster.wait_ready()
        setup_started = time.monotonic()
        _build_template(cluster, "plain", rows, partitioned=False)
        _build_template(cluster, "partitioned", rows, partitioned=True)
        setup_s = time.monotonic() - setup_started
        runs: dict[tuple[str, str], list[Prune]] = {}
        for rep in range(repeats):
            for scenario in ("plain", "partitioned"):
                # Alternate which method goes first, so neither always meets a warmer cache.
                for method in ("naive", "function")[:: 1 if rep % 2 == 0 else -1]:
                    print(f"   {rep + 1}/{repeats} {scenario} / {method} ...", flush=True)
                    prune = _measure(cluster, scenario, method, baseline_s)
                    runs.setdefault((scenario, method), []).append(prune)
        return _report(rows, runs, quick, setup_s)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
