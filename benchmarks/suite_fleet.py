"""A simulated fleet of Lambda containers flushing metrics into one PostgreSQL (issue 13).

Every simulated container is a real OS process with its own container identity, its
own database connection and its own pending deltas, running the real API handler
(`ops.api.Api`, so the real recording, flush policy and shutdown flush). A fleet
manager process imports everything once and forks the containers from itself (a
fork costs milliseconds; a fresh interpreter 150 ms of imports). Per phase:

* `containers` containers alive at any time, each receiving a Poisson stream of
  `rate` invocations per second, served one at a time as Lambda does.
* Containers die after an exponentially distributed lifetime and are replaced at
  once: most by SIGTERM (delivered while idle, as Lambda's shutdown is; SIGKILL if
  still alive after 2 s), a share by SIGKILL at any moment. At the end of the
  phase every container still alive gets SIGTERM.
* The suite scrapes `/metrics` in-process every few seconds and times it.

Measured per METRICS_FLUSH_INTERVAL_S, over a steady window that leaves out the
staggered start and the final shutdown: write transactions (xids assigned:
`pg_snapshot_xmax` deltas; read-only transactions take none), all commits
(`pg_stat_database.xact_commit`), WAL bytes (`pg_current_wal_lsn`), PostgreSQL CPU
(`/proc` of the postmaster: its own, its live children's and its reaped
children's time). Over the whole phase: flush and invocation latencies, scrape
times, and exactness.

Exactness: each container counts the invocations it served in shared memory, and
when deltas join a numbered batch (`Outbox.add`) notes how many invocations that
batch covers. After the phase, a container's cursor row (`metric_flush_cursors.seq`:
the highest batch stored) says exactly which of its invocations the store holds;
what it does not hold is what the container lost. The store's total must equal the
invocations served minus those losses, SIGTERMed containers must lose nothing, and
`/metrics` must serve what the store holds.

Run: `make bench SUITES=fleet` (or `.venv/bin/python -m benchmarks fleet [--quick]`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.stats import verdict
from tools import ROOT

RATE = 10.0  # invocations per second per container
KILL_SHARE = 0.1  # deaths by SIGKILL; the rest by SIGTERM
TERM_GRACE_S = 2.0  # SIGKILL after this if SIGTERM did not end the container
ROUTES = (
    ("GET", "/items", "/items"),
    ("POST", "/items", "/items"),
    ("GET", "/items/42", "/items/{id}"),
    ("DELETE", "/items/42", "/items/{id}"),
)
STATUSES = ((200, 0.93), (404, 0.05), (503, 0.02))
ROUTE_TEMPLATES = tuple(sorted({r[2] for r in ROUTES}))


@dataclass(frozen=True)
class Plan:
    containers: int
    phase_s: float
    lifetime_s: float  # mean
    warmup_s: float  # the steady window starts here...
    tail_s: float  # ...and ends this long before the final shutdown
    scrape_every_s: float
    intervals: tuple[float, ...]


QUICK = Plan(10, 16.0, 20.0, 4.0, 1.0, 2.0, (0.0, 1.0, 10.0))
FULL = Plan(30, 45.0, 60.0, 12.0, 2.0, 3.0, (0.0, 1.0, 10.0, 30.0))


def _plan(quick: bool) -> Plan:
    """QUICK or FULL; BENCH_FLEET_CONTAINERS / BENCH_FLEET_INTERVALS (comma-separated)
    override the size and the intervals, to find what the machine sustains."""
    plan = QUICK if quick else FULL
    size = os.environ.get("BENCH_FLEET_CONTAINERS")
    intervals = os.environ.get("BENCH_FLEET_INTERVALS")
    return Plan(
        int(size) if size else plan.containers,
        plan.phase_s,
        plan.lifetime_s,
        plan.warmup_s,
        plan.tail_s,
        plan.scrape_every_s,
        tuple(float(i) for i in intervals.split(",")) if intervals else plan.intervals,
    )


# -- the scoreboard: one shared memory file, int64 words --------------------------------

H_STATE, H_SLOTS, H_BIRTHS, H_ERRORS = 0, 1, 2, 3
HEADER = 16
HIST = 64  # log buckets: quarter octaves from 10 µs
RING = 64  # batch seq -> invocations covered
F_STATE, F_PID, F_SERVED, F_BORN, F_DIED, F_FLUSHES, F_FAILED, F_LAG = range(8)
F_ID = 8  # 16 bytes: the container's identity (uuid hex)
F_DEATH = 10  # planned: 1 SIGTERM, 2 SIGKILL
F_LATE = 11  # invocations that started more than 100 ms behind their arrival
F_RING = 16
F_HIST = F_RING + 2 * RING  # histograms: invocation, after-invocation hooks, flushes
SLOT = F_HIST + 5 * HIST
HIST_INVOKE, HIST_HOOKS, HIST_FLUSH, HIST_FIRST, HIST_SHUTDOWN = 0, 1, 2, 3, 4
# container states (written by the manager)
ALIVE, TERMINATING, TERMINATED, KILLED, KILLED_LATE = 1, 2, 3, 4, 5


class Board:
    def __init__(self, path: Path, slots: int, create: bool) -> None:
        size = 8 * (HEADER + slots * SLOT)
        if create:
            with path.open("wb") as f:
                f.truncate(size)
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), size)
        self.w = memoryview(self._map).cast("q")
        self.slots = slots

    def at(self, slot: int, field: int) -> int:
        return HEADER + slot * SLOT + field

    def get(self, slot: int, field: int) -> int:
        return self.w[self.at(slot, field)]

    def put(self, slot: int, field: int, value: int) -> None:
        self.w[self.at(slot, field)] = value

    def hist_add(self, slot: int, which: int, seconds: float) -> None:
        us = seconds * 1e6
        b = 0 if us <= 10 else min(HIST - 1, int(4 * math.log2(us / 10)))
        i = self.at(slot, F_HIST + which * HIST + b)
        self.w[i] += 1

    def hist(self, slots: range, which: int) -> list[int]:
        out = [0] * HIST
        for s in slots:
            base = self.at(s, F_HIST + which * HIST)
            for b in range(HIST):
                out[b] += self.w[base + b]
        return out

    def set_identity(self, slot: int, container: str) -> None:
        raw = bytes.fromhex(container)[:16].ljust(16, b"\0")
        self.put(slot, F_ID, int.from_bytes(raw[:8], "big", signed=True))
        self.put(slot, F_ID + 1, int.from_bytes(raw[8:], "big", signed=True))

    def identity(self, slot: int) -> str:
        a, b = self.get(slot, F_ID), self.get(slot, F_ID + 1)
        return (a.to_bytes(8, "big", signed=True) + b.to_bytes(8, "big", signed=True)).hex()

    def note_batch(self, slot: int, seq: int, served: int) -> None:
        i = self.at(slot, F_RING + 2 * (seq % RING))
        self.w[i + 1] = served  # covered first: the seq marks the entry complete
        self.w[i] = seq

    def covered(self, slot: int, stored_seq: int) -> int:
        """Invocations whose recordings are in batches up to `stored_seq`."""
        best_seq, best = 0, 0
        for k in range(RING):
            i = self.at(slot, F_RING + 2 * k)
            seq, served = self.w[i], self.w[i + 1]
            if 0 < seq <= stored_seq and seq >= best_seq:
                best_seq, best = seq, max(best, served)
        return best

    def close(self) -> None:
        self.w.release()
        self._map.close()
        self._file.close()


def hist_pct(counts: list[int], p: float) -> float:
    """The p-th percentile in ms (the bucket's geometric middle; ±9%)."""
    total = sum(counts)
    if not total:
        return float("nan")
    rank, seen = p / 100 * total, 0
    for b, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            return 0.01 * 2 ** ((b + 0.5) / 4)
    return float("nan")


# -- a container (a forked child of the manager) ----------------------------------------


def _fleet_api() -> Any:
    from ops.api import Request, Response, json_response
    from ops.service import service_api

    app = service_api()
    rng = random.Random()

    def handle(req: Request) -> Response:
        roll, status = rng.random(), 200
        for code, share in STATUSES:
            if roll < share:
                status = code
                break
            roll -= share
        return json_response(status, {"route": req.path})

    for method, _, template in ROUTES:
        app.route(method, template)(handle)
    return app


def _fresh_container(env: dict[str, str]) -> None:
    """What a new Lambda container starts with: nothing pending, no connection."""
    from ops import db, metrics
    from ops.config import settings

    os.environ.update(env)
    settings.cache_clear()
    db.reset()
    metrics.reset()
    try:  # the shutdown flush and deadline watch, installed again for this process
        from ops.metrics import process_hooks
    except ImportError:  # before the flush policy existed: nothing to install
        return
    process_hooks._installed = False  # the manager's watch thread did not survive the fork
    process_hooks._watch = None
    process_hooks._previous.clear()
    process_hooks.install()


def _container(board: Board, slot: int, app: Any, events: list[dict[str, Any]]) -> None:
    from ops.metrics import current, store
    from tools.runtime import LambdaContext

    served = 0

    def count_served() -> None:  # runs before the flush hook: the recordings are complete
        nonlocal served
        served += 1
        board.put(slot, F_SERVED, served)

    original_add = store.Outbox.add

    def add(self: Any, deltas: Any) -> None:
        original_add(self, deltas)
        if self.batches:  # before any flush can send it: the batch covers `served`
            board.note_batch(slot, self.batches[-1].seq, served)

    store.Outbox.add = add  # type: ignore[method-assign]
    original_push = store.push

    pushed = False

    def push(*args: Any, **kwargs: Any) -> Any:
        nonlocal pushed
        started = time.perf_counter()
        result = original_push(*args, **kwargs)
        # Kept apart: a container's first flush, which also opens its connection (SCRAM),
        # and the shutdown flush (off the main thread; every container of a phase ends
        # at once, so these queue on the two CPUs).
        if threading.current_thread() is not threading.main_thread():
            which = HIST_SHUTDOWN
        else:
            which = HIST_FLUSH if pushed else HIST_FIRST
            pushed = True
        board.hist_add(slot, which, time.perf_counter() - started)
        field = (
            F_FLUSHES if getattr(result, "outcome", "") == store.FlushOutcome.STORED else F_FAILED
        )
        board.put(slot, field, board.get(slot, field) + 1)
        return result

    store.push = push  # type: ignore[assignment]
    hooks = list(app.after_invocation)

    def timed_hooks() -> None:
        started = time.perf_counter()
        for hook in hooks:
            app._safely(hook)
        board.hist_add(slot, HIST_HOOKS, time.perf_counter() - started)

    app.after_invocation[:] = [count_served, timed_hooks]
    board.set_identity(slot, current().outbox.container)

    rng = random.Random()
    term = {signal.SIGTERM}
    at = time.monotonic()
    while True:
        at += rng.expovariate(RATE)
        wait = at - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # idle: a pending SIGTERM is delivered here
        else:
            lag_us = int(-wait * 1e6)
            if lag_us > board.get(slot, F_LAG):
                board.put(slot, F_LAG, lag_us)
            if lag_us > 100_000:
                board.put(slot, F_LATE, board.get(slot, F_LATE) + 1)
        event = events[rng.randrange(len(events))]
        signal.pthread_sigmask(signal.SIG_BLOCK, term)  # Lambda never stops a running invocation
        started = time.perf_counter()
        app.lambda_handler(event, LambdaContext("fleet", 10))
        board.hist_add(slot, HIST_INVOKE, time.perf_counter() - started)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, term)


# -- the fleet manager (a process of its own; forks the containers) ---------------------


def _manager(
    board_path: str, slots: int, url: str, interval: float, plan: Plan, start_at: float
) -> None:
    from tools.apigw import proxy_event

    board = Board(Path(board_path), slots, create=False)
    env = {
        "DATABASE_URL": url,
        "METRICS_FLUSH_INTERVAL_S": f"{interval:g}",
        "POWERTOOLS_METRICS_NAMESPACE": "Fleet",
        "AWS_LAMBDA_FUNCTION_NAME": "fleet",
    }
    os.environ.update(env)
    app = _fleet_api()
    events = [proxy_event(method=m, path=p, resource=r) for m, p, r in ROUTES]
    devnull = os.open(os.devnull, os.O_WRONLY)
    rng = random.Random()
    alive: dict[int, tuple[int, float, bool]] = {}  # pid -> (slot, death at, by SIGKILL)
    terminating: dict[int, tuple[int, float]] = {}  # pid -> (slot, SIGKILL at)
    used = 0

    def birth(now: float) -> None:
        nonlocal used
        if used >= slots:
            board.w[H_ERRORS] += 1
            return
        slot, used = used, used + 1
        board.w[H_SLOTS] = used
        killed = rng.random() < KILL_SHARE
        board.put(slot, F_DEATH, 2 if killed else 1)
        board.put(slot, F_BORN, time.time_ns())
        board.put(slot, F_STATE, ALIVE)
        pid = os.fork()
        if pid == 0:  # the container
            code = 0
            try:
                os.dup2(devnull, 1)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _fresh_container(env)
                _container(board, slot, app, events)
            except BaseException:  # a broken container must not look like a clean one
                import traceback

                traceback.print_exc()
                code = 70
            os._exit(code)
        board.put(slot, F_PID, pid)
        board.w[H_BIRTHS] += 1
        alive[pid] = (slot, now + rng.expovariate(1.0 / plan.lifetime_s), killed)

    def reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = alive.pop(pid, (None,))[0]
            if slot is None:
                slot = terminating.pop(pid, (None,))[0]
            if slot is None:
                continue
            board.put(slot, F_DIED, time.time_ns())
            state = board.get(slot, F_STATE)
            if state == ALIVE:  # died on its own: a crash
                board.w[H_ERRORS] += 1
                board.put(slot, F_STATE, KILLED)
            elif state == TERMINATING:
                board.put(slot, F_STATE, TERMINATED)

    def terminate(pid: int, now: float) -> None:
        slot, _, _ = alive.pop(pid)
        board.put(slot, F_STATE, TERMINATING)
        terminating[pid] = (slot, now + TERM_GRACE_S)
        os.kill(pid, signal.SIGTERM)

    def kill(pid: int, late: bool) -> None:
        slot = (terminating.pop(pid) if late else alive.pop(pid))[0]
        board.put(slot, F_STATE, KILLED_LATE if late else KILLED)
        terminating[pid] = (slot, float("inf"))  # reaped later
        os.kill(pid, signal.SIGKILL)

    while time.time() < start_at:
        time.sleep(0.005)
    began = time.monotonic()
    end = began + plan.phase_s
    board.w[H_STATE] = 1
    stagger = [
        began + i * min(2.0, plan.warmup_s / 2) / plan.containers for i in range(plan.containers)
    ]
    while True:
        now = time.monotonic()
        while stagger and stagger[0] <= now:
            stagger.pop(0)
            birth(now)
        if now >= end:
            break
        for pid, (_, death_at, by_kill) in list(alive.items()):
            if now >= death_at:
                kill(pid, False) if by_kill else terminate(pid, now)
                birth(now)
        for pid, (_, kill_at) in list(terminating.items()):
            if now >= kill_at:
                kill(pid, True)
        reap()
        time.sleep(0.01)
    board.w[H_STATE] = 2
    for pid in list(alive):
        terminate(pid, time.monotonic())
    while terminating:
        now = time.monotonic()
        for pid, (_, kill_at) in list(terminating.items()):
            if now >= kill_at:
                kill(pid, True)
        reap()
        time.sleep(0.01)
    board.w[H_STATE] = 3
    board.close()


# -- measuring PostgreSQL ---------------------------------------------------------------


def _proc_cpu_ticks(pid: int, children_too: bool) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # fields[11..14] = utime stime cutime cstime (stat fields 14-17)
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if children_too else 0)


def pg_cpu_s(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live children and its reaped children."""
    ticks = _proc_cpu_ticks(postmaster, True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
            ticks += _proc_cpu_ticks(int(entry.name), True)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    at: float
    xid: int
    commits: int
    wal: str
    cpu_s: float
    served: int


class Probe:
    """Readings of the throwaway cluster, from a connection to another database (so that
    the readings' own transactions are not the measured database's commits)."""

    def __init__(self, admin_url: str, dbname: str, postmaster: int) -> None:
        from ops.db import connect_url

        self.conn = connect_url(admin_url, timeout_s=30)
        self.dbname = dbname
        self.postmaster = postmaster

    def snapshot(self, served: int) -> Snapshot:
        xid, commits, wal = self.conn.run(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
            "(SELECT xact_commit FROM pg_stat_database WHERE datname = :db), "
            "pg_current_wal_lsn()::text",
            db=self.dbname,
        )[0]
        return Snapshot(time.monotonic(), xid, commits, wal, pg_cpu_s(self.postmaster), served)

    def wal_bytes(self, a: Snapshot, b: Snapshot) -> int:
        return int(self.conn.run(f"SELECT pg_wal_lsn_diff('{b.wal}', '{a.wal}')::bigint")[0][0])

    def close(self) -> None:
        self.conn.close()


# -- one phase ---------------------------------------------------------------------------


def _served(board: Board) -> int:
    return sum(board.get(s, F_SERVED) for s in range(board.w[H_SLOTS]))


def _scrape(handler: Callable[..., Any], event: dict[str, Any]) -> tuple[float, str]:
    from tools.runtime import LambdaContext

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        resp = handler(event, LambdaContext("metrics", 10))
    elapsed = (time.perf_counter() - started) * 1000
    if resp["statusCode"] != 200:
        raise RuntimeError(f"/metrics answered {resp['statusCode']}")
    return elapsed, resp["body"]


SAMPLE = re.compile(r'^http_requests_total\{method="[A-Z]+",route="([^"]+)",status="\d+"\} (\S+)$')


def _served_by_scrape(body: str) -> int:
    total = 0.0
    for line in body.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) in ROUTE_TEMPLATES:
            total += float(match.group(2))
    return int(total)


def _sql(url: str, query: str) -> list[list[Any]]:
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=30)
    try:
        return conn.run(query)
    finally:
        conn.close()


def run_phase(url: str, probe: Probe, interval: float, plan: Plan, workdir: Path) -> dict[str, Any]:
    from ops import db, metrics
    from ops.config import settings
    from ops.log import logger
    from tools.apigw import proxy_event
    from tools.runtime import load_handler

    _sql(url, "TRUNCATE metric_values, metric_series, metric_flush_cursors")
    slots = plan.containers * 8 + 64
    board_path = workdir / f"board-{interval:g}.bin"
    board = Board(board_path, slots, create=True)
    start_at = time.time() + 1.5
    manager = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.suite_fleet",
            "manager",
            str(board_path),
            str(slots),
            url,
            repr(interval),
            json.dumps(plan.__dict__),
            repr(start_at),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"manager-{interval:g}.log").open("w"),
    )
    # The scraper: a metrics container of its own, in this process.
    os.environ.update(DATABASE_URL=url, METRICS_FLUSH_INTERVAL_S=f"{interval:g}")
    os.environ.pop("POWERTOOLS_METRICS_NAMESPACE", None)
    settings.cache_clear()
    db.reset()
    metrics.reset()
    handler = load_handler(ROOT / "functions" / "metrics")
    logger.registered_handler.setStream(io.StringIO())  # the scrapes' request log lines
    logger.setLevel("WARNING")
    scrape_event = proxy_event(method="GET", path="/metrics", resource="/metrics")
    scrapes: list[tuple[float, int]] = []  # (ms, value rows at the time)
    window: list[Snapshot] = []
    while board.w[H_STATE] == 0 and manager.poll() is None:
        time.sleep(0.01)
    began = time.monotonic()
    next_scrape = began + plan.scrape_every_s
    marks = [began + plan.warmup_s, began + plan.phase_s - plan.tail_s]
    while board.w[H_STATE] < 3 and manager.poll() is None:
        now = time.monotonic()
        if marks and now >= marks[0]:
            marks.pop(0)
            window.append(probe.snapshot(_served(board)))
        if board.w[H_STATE] == 1 and now >= next_scrape:
            next_scrape += plan.scrape_every_s
            ms, _ = _scrape(handler, scrape_event)
            rows = db.get_db().run("SELECT count(*) FROM metric_values")[0][0]
            scrapes.append((ms, rows))
        time.sleep(0.02)
    if manager.wait(timeout=60) != 0 or board.w[H_STATE] != 3:
        raise RuntimeError(f"fleet manager failed; see {workdir}/manager-{interval:g}.log")
    if len(window) != 2:
        raise RuntimeError("the phase ended before its steady window")

    # -- exactness ------------------------------------------------------------------------
    cursors = {c: int(s) for c, s in _sql(url, "SELECT container, seq FROM metric_flush_cursors")}
    stored = int(
        _sql(
            url,
            "SELECT coalesce(sum(v.value), 0)::bigint FROM metric_values v "
            "JOIN metric_series s ON s.id = v.series_id WHERE s.family = 'http_requests_total' "
            "AND s.labels LIKE '%route=\"/items%'",
        )[0][0]
    )
    os.environ["METRICS_NEW_SERIES_HOLD_S"] = "0"  # every series at its value, even new ones
    settings.cache_clear()
    _, body = _scrape(handler, scrape_event)
    os.environ.pop("METRICS_NEW_SERIES_HOLD_S")
    settings.cache_clear()
    exposed = _served_by_scrape(body)
    used = board.w[H_SLOTS]
    by_state: dict[int, dict[str, int]] = {}
    for s in range(used):
        state = board.get(s, F_STATE)
        served = board.get(s, F_SERVED)
        covered = board.covered(s, cursors.get(board.identity(s), 0))
        row = by_state.setdefault(state, {"containers": 0, "served": 0, "lost": 0})
        row["containers"] += 1
        row["served"] += served
        row["lost"] += served - covered
    served_total = sum(r["served"] for r in by_state.values())
    lost = {k: by_state.get(k, {}).get("lost", 0) for k in (TERMINATED, KILLED, KILLED_LATE)}
    a, b = window
    wall = b.at - a.at
    invocations = b.served - a.served
    x = {
        "interval": interval,
        "containers": plan.containers,
        "births": board.w[H_BIRTHS],
        "errors": board.w[H_ERRORS],
        "by_state": {str(k): v for k, v in by_state.items()},
        "window_s": wall,
        "invocations": invocations,
        "ips": invocations / wall,
        "xids": b.xid - a.xid,
        "commits": b.commits - a.commits,
        "wal": probe.wal_bytes(a, b),
        "cpu_s": b.cpu_s - a.cpu_s,
        "served": served_total,
        "stored": stored,
        "exposed": exposed,
        "lost_term": lost[TERMINATED],
        "lost_kill": lost[KILLED] + lost[KILLED_LATE],
        "killed_late": by_state.get(KILLED_LATE, {}).get("containers", 0),
        "flushes": sum(board.get(s, F_FLUSHES) for s in range(used)),
        "failed": sum(board.get(s, F_FAILED) for s in range(used)),
        "late": sum(board.get(s, F_LATE) for s in range(used)),
        "max_lag_ms": max((board.get(s, F_LAG) for s in range(used)), default=0) / 1000,
        "hist": {
            w: board.hist(range(used), w)
            for w in (HIST_INVOKE, HIST_HOOKS, HIST_FLUSH, HIST_FIRST, HIST_SHUTDOWN)
        },
        "scrapes": scrapes,
        "rows": _sql(
            url,
            "SELECT (SELECT count(*) FROM metric_values), (SELECT count(*) FROM metric_series), "
            "(SELECT count(*) FROM metric_flush_cursors), "
            "pg_total_relation_size('metric_values') + pg_total_relation_size('metric_series') "
            "+ pg_total_relation_size('metric_flush_cursors')",
        )[0],
    }
    board.close()
    return x


# -- the suite ---------------------------------------------------------------------------


@contextlib.contextmanager
def _cluster() -> Iterator[tuple[str, str, int]]:
    from tools.migrate import apply_url
    from tools.pgcluster import PgCluster

    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    cluster = PgCluster(folder / "data")
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    try:
        url = cluster.create_database("bench_fleet")
        apply_url(url)
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        yield url, cluster.url("postgres"), postmaster
    finally:
        cluster.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def _pcts(counts: list[int]) -> str:
    if not sum(counts):
        return "-"
    return f"{hist_pct(counts, 50):.2f} / {hist_pct(counts, 99):.2f}"


def _fmt_phase(x: dict[str, Any]) -> dict[str, str]:
    inv = x["invocations"]
    per_k = 1000.0 / inv if inv else float("nan")
    scr = [ms for ms, _ in x["scrapes"]]
    rows = [n for _, n in x["scrapes"]]
    hist = x["hist"]
    return {
        "interval": f"{x['interval']:g} s",
        "ips": f"{x['ips']:,.0f}",
        "tx_s": f"{x['xids'] / x['window_s']:,.1f}",
        "tx_k": f"{x['xids'] * per_k:,.2f}",
        "commits_k": f"{x['commits'] * per_k:,.1f}",
        "cpu": f"{100 * x['cpu_s'] / x['window_s']:.1f}%",
        "cpu_k": f"{1000 * x['cpu_s'] * per_k:,.0f}",
        "cpu_tx": f"{1000 * x['cpu_s'] / x['xids']:.2f}" if x["xids"] else "-",
        "wal_k": f"{x['wal'] * per_k / 1024:,.1f}",
        "wal_tx": f"{x['wal'] / x['xids']:,.0f}" if x["xids"] else "-",
        "flush": _pcts(hist[HIST_FLUSH]),
        "first": _pcts(hist[HIST_FIRST]),
        "shutdown": _pcts(hist[HIST_SHUTDOWN]),
        "hooks": _pcts(hist[HIST_HOOKS]),
        "invoke": _pcts(hist[HIST_INVOKE]),
        "scrape": f"{statistics.median(scr):.1f} / {max(scr):.1f}" if scr else "-",
        "rows": f"{statistics.median(rows):,.0f} / {max(rows):,}" if rows else "-",
    }


def run(quick: bool) -> str:
    plan = _plan(quick)
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    workdir = ROOT / "benchmarks" / ".work" / "fleet"
    workdir.mkdir(parents=True, exist_ok=True)
    phases: list[dict[str, Any]] = []
    with _cluster() as (url, admin_url, postmaster):
        probe = Probe(admin_url, "bench_fleet", postmaster)
        try:
            for interval in plan.intervals:
                print(f"   interval {interval:g} s", file=sys.stderr, flush=True)
                phases.append(run_phase(url, probe, interval, plan, workdir))
        finally:
            probe.close()
    (workdir / "results.json").write_text(json.dumps(phases, indent=1))
    return report(phases, plan, quick, time.monotonic() - began, load_before)


def report(
    phases: list[dict[str, Any]],
    plan: Plan,
    quick: bool,
    elapsed: float,
    load_before: float,
    load_after: float | None = None,
) -> str:
    rows = [_fmt_phase(x) for x in phases]
    tx_k = {x["interval"]: 1000.0 * x["xids"] / x["invocations"] for x in phases}
    ten = tx_k.get(10.0, float("nan"))
    exact = all(
        x["stored"] == x["served"] - x["lost_term"] - x["lost_kill"] and x["exposed"] == x["stored"]
        for x in phases
    )
    no_term_loss = all(x["lost_term"] == 0 for x in phases)
    churn_k = 1000.0 / (RATE * plan.lifetime_s)
    lines = [
        "## Fleet simulation (issue 13)",
        "",
        f"{plan.containers} containers alive at any time, each a real process (forked from "
        "a manager that imported everything once) with its own identity, database "
        f"connection and pending deltas, serving Poisson arrivals at {RATE:g} invocations/s "
        "one at a time through the real `ops.api.Api` handler (4 routes, statuses "
        "200/404/503). Lifetimes exponential, mean "
        f"{plan.lifetime_s:g} s; {100 * KILL_SHARE:.0f}% of deaths by SIGKILL at any moment, "
        f"the rest by SIGTERM while idle (SIGKILL after {TERM_GRACE_S:g} s); at the end of "
        f"each {plan.phase_s:g} s phase every container gets SIGTERM. One PostgreSQL "
        "(`tools.pgcluster`: fsync off, 127.0.0.1), `METRICS_SHARDS` 16, `/metrics` scraped "
        f"in-process every {plan.scrape_every_s:g} s. Rates are over the steady window "
        f"(from {plan.warmup_s:g} s to {plan.tail_s:g} s before the end of each phase); "
        "latencies, scrapes and exactness over the whole phase.",
        "",
        "### Targets",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
        f"| write transactions per 1,000 invocations, interval 10 s, {RATE:g}/s per container "
        f"| {ten:.2f} | 5 | {verdict(ten <= 5)} |",
        "| counts lost by containers ended with SIGTERM (all intervals) "
        f"| {sum(x['lost_term'] for x in phases)} | 0 | {verdict(no_term_loss)} |",
        "| stored = served - what SIGKILLed containers held (counted); `/metrics` = stored "
        f"| {'exact' if exact else 'MISMATCH'} in {len(phases)} phases | exact "
        f"| {verdict(exact)} |",
        "",
        "A container flushes when its oldest pending delta is older than the interval, "
        "checked at the end of an invocation: at r invocations/s that is one write per "
        "r x T + 1 invocations, so the floor is 1,000 / (r x T + 1) per 1,000 invocations "
        f"(interval 10 s at {RATE:g}/s: {1000 / (RATE * 10 + 1):.1f}), plus two flushes per "
        "container lifetime L (its first invocation's, which follows no other, and its "
        f"shutdown flush): 2,000 / (r x L) ({2 * churn_k:.1f} here, with L = "
        f"{plan.lifetime_s:g} s; 0.06 for containers living an hour). At most 5 per 1,000 "
        f"at {RATE:g}/s needs an interval of about 20 s or more in a fleet of long-lived "
        "containers" + (f" (measured at 30 s: {tx_k[30.0]:.2f})." if 30.0 in tx_k else "."),
        "",
        "### Load on the database",
        "",
        "*tx*: write transactions (xids assigned); *commits*: every committed transaction, "
        "read-only ones (connection setup, scrapes) included; *PG CPU*: the postmaster and all "
        "its children, as a share of one core, per 1,000 invocations and per write "
        "transaction; *WAL* per 1,000 invocations and per write transaction; latencies in ms, "
        "p50 / p99 (log-bucketed, ±9%): *hooks*: what the metrics add at the end of an "
        "invocation (EMF line, flush when due), *flush*: each flush that went to the store "
        "(*first*: a container's first, which also opens its connection; *shutdown*: on "
        "SIGTERM, all containers of a phase at once at its end), *scrape*: median / max, with "
        "the value rows it summed.",
        "",
        "| interval | inv/s | tx/s | tx per 1,000 inv | commits per 1,000 inv | PG CPU "
        "| PG CPU ms per 1,000 inv / per tx | WAL KiB per 1,000 inv / bytes per tx "
        "| hooks | flush | first flush | shutdown flush | invocation | scrape ms "
        "| value rows at scrapes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['interval']} | {r['ips']} | {r['tx_s']} | **{r['tx_k']}** | {r['commits_k']} "
            f"| {r['cpu']} | {r['cpu_k']} / {r['cpu_tx']} | {r['wal_k']} / {r['wal_tx']} "
            f"| {r['hooks']} | {r['flush']} | {r['first']} | {r['shutdown']} | {r['invoke']} "
            f"| {r['scrape']} "
            f"| {r['rows']} |"
            for r in rows
        ),
        "",
        "### Exactness and churn",
        "",
        "| interval | containers (births) | served | stored | `/metrics` | lost: SIGTERM "
        "| lost: SIGKILL (containers) | SIGTERM ignored → SIGKILL | flushes (failed) "
        "| invocations > 100 ms late | value rows / series / cursors at the end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in phases:
        kills = sum(
            x["by_state"].get(str(k), {}).get("containers", 0) for k in (KILLED, KILLED_LATE)
        )
        values, series, cursors, size = x["rows"]
        lines.append(
            f"| {x['interval']:g} s | {x['births']} | {x['served']:,} | {x['stored']:,} "
            f"| {x['exposed']:,} | {x['lost_term']} | {x['lost_kill']} ({kills}) "
            f"| {x['killed_late']} | {x['flushes']:,} ({x['failed']}) | {x['late']} "
            f"| {values:,} / {series:,} / {cursors:,} ({size / 1024:,.0f} KiB) |"
        )
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPUs (shared), load {load_before:.2f} before, "
        f"{os.getloadavg()[0] if load_after is None else load_after:.2f} after; suite time "
        f"{elapsed:.0f} s"
        f"{' (quick run)' if quick else ''}. Raw numbers: `benchmarks/.work/fleet/results.json`.",
    ]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "manager":
    _manager(
        sys.argv[2],
        int(sys.argv[3]),
        sys.argv[4],
        float(sys.argv[5]),
        Plan(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(sys.argv[6]).items()
            }
        ),
        float(sys.argv[7]),
    )
