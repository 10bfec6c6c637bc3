"""What the shutdown flush costs (issues 8 and 19), under the real runtime client
(awslambdaric, tools.runtime.ric) against a loopback Runtime API + Extensions API stand-in.

1. SIGTERM to exit of the health function that served 30 invocations (liveness and
   checks), all but the first few still pending (`METRICS_FLUSH_INTERVAL_S=600`), on a
   loopback PostgreSQL, in both ways awslambdaric polls: on a background thread
   (AWS_EXECUTION_ENV python3.13) and on the main thread inside its C code (python3.11).
   The process exits right after the flush, so SIGTERM-to-exit bounds SIGTERM-to-flushed;
   every sample's stored total is checked against the requests it served.
2. Cold start: process start to the first `/health/live` answer (init, the runtime's
   first poll, one invocation), the extension registered (`http.client`) and not
   registered at all; variants interleaved, paired per round.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.lambda_variants import database
from benchmarks.stats import nearest_rank
from tests.support.db import runner
from tests.support.metrics import stored_probe_requests, truncate_metrics
from tools.runtime.apigw import proxy_event
from tools.runtime.ric import POLLING, RicFunction

TARGET_SHUTDOWN_P99_MS = 150.0
TARGET_COLD_START_MS = 5.0
KILL_S = 0.5
INVOCATIONS = 30
MODES = ("thread", "main")  # tools.runtime.ric.POLLING: "unset" polls as "main" does
ROUNDS = {True: (6, 8), False: (30, 40)}  # quick / full: (shutdown rounds, cold rounds)


def _stored_requests(url: str, *, truncate: bool = False) -> int:
    """The store's http_requests_total (emptied first with `truncate`)."""
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=10, statement_timeout_ms=10_000)
    try:
        if truncate:
            truncate_metrics(conn.run)
        return stored_probe_requests(runner(conn))
    finally:
        conn.close()


def shutdown_sample(url: str, polling: str) -> tuple[float, bool, int]:
    """(ms from SIGTERM to exit, killed, exit status); checks the stored total."""
    _stored_requests(url, truncate=True)
    env = {"DATABASE_URL": url, "METRICS_FLUSH_INTERVAL_S": "600"}
    env["POWERTOOLS_METRICS_NAMESPACE"] = "Bench"
    fn = RicFunction("HealthFunction", env, execution_env=POLLING[polling], capture=False)
    try:
        fn.wait_init()
        for i in range(INVOCATIONS):
            status, _ = fn.get("/health" if i % 5 == 0 else "/health/live")
            if status != 200:
                raise AssertionError(f"{polling}: answered {status}")
        ending = fn.shutdown(KILL_S)
    finally:
        fn.close()
    stored = _stored_requests(url)
    if stored != INVOCATIONS:
        raise AssertionError(f"{polling}: stored {stored} of {INVOCATIONS} requests served")
    return ending.seconds * 1000.0, ending.killed, ending.returncode


# The registration is timed in the function process (wall and this thread's CPU) and
# written to the file named by argv[3]: the stand-in answering is in the wall time.
BOOT = (
    "import sys, time, json\n"
    "import ops.extensions_api as extensions_api\n"
    "import ops.metrics.process_hooks\n"  # the same imports in every variant
    + "variant, out = sys.argv[1], sys.argv[3]\n"
    "register = (lambda api, name: None) if variant == 'none'"
    " else extensions_api.register_without_events\n"
    "def timed(api, name):\n"
    "    wall, cpu = time.perf_counter(), time.thread_time()\n"
    "    try:\n"
    "        return register(api, name)\n"
    "    finally:\n"
    "        with open(out, 'w') as f:\n"
    "            json.dump([(time.perf_counter() - wall) * 1000,"
    " (time.thread_time() - cpu) * 1000], f)\n"
    "extensions_api.register_without_events = timed\n"
    "from awslambdaric.__main__ import main\n"
    "main([sys.argv[0], sys.argv[2]])\n"
)
COLD_VARIANTS = {
    "none": "no extension registered",
    "http.client": "registered with http.client (the code)",
}


def cold_sample(url: str, variant: str, timing: Path) -> tuple[float, float, float]:
    """ms from the process start to the answer of its first `/health/live`; the
    registration's wall and CPU ms in the function process."""
    env = {"DATABASE_URL": url, "POWERTOOLS_METRICS_NAMESPACE": "Bench"}
    boot = [sys.executable, "-c", BOOT, variant, "health.app.lambda_handler", str(timing)]
    fn = RicFunction("HealthFunction", env, capture=False, bootstrap=boot)
    try:
        fn.wait_init()
        event = proxy_event(method="GET", path="/health/live", resource="/health/live")
        invocation = fn.api.submit(event, 6.0)
        if not invocation.answered.wait(30) or invocation.outcome != "response":
            raise AssertionError(f"{variant}: no answer")
        registered = len(fn.api.registrations)
        if registered != (0 if variant == "none" else 1):
            raise AssertionError(f"{variant}: {registered} registrations")
        assert invocation.answered_at is not None
        wall, cpu = json.loads(timing.read_text())
        return (invocation.answered_at - fn.started_at) * 1000.0, wall, cpu
    finally:
        fn.close()


def run(quick: bool) -> str:
    shutdown_rounds, cold_rounds = ROUNDS[quick]
    shutdown: dict[str, list[float]] = {mode: [] for mode in MODES}
    killed = 0
    exits: dict[str, dict[int, int]] = {mode: {} for mode in MODES}  # exit status -> samples
    cold: dict[str, list[float]] = {variant: [] for variant in COLD_VARIANTS}
    register: dict[str, list[tuple[float, float]]] = {variant: [] for variant in COLD_VARIANTS}
    timing = Path(tempfile.mkdtemp(prefix="bench-shutdown-")) / "registration.json"
    with database() as url:
        for _ in range(shutdown_rounds):
            for mode in MODES:
                ms, was_killed, status = shutdown_sample(url, mode)
                shutdown[mode].append(ms)
                killed += was_killed
                exits[mode][status] = exits[mode].get(status, 0) + 1
        for variant in COLD_VARIANTS:  # warm the page cache and bytecode
            cold_sample(url, variant, timing)
        for i in range(cold_rounds):
            order = list(COLD_VARIANTS)
            for variant in order[i % 2 :] + order[: i % 2]:
                total, wall, cpu = cold_sample(url, variant, timing)
                cold[variant].append(total)
                register[variant].append((wall, cpu))
    shutil.rmtree(timing.parent, ignore_errors=True)
    lines = [
        f"{shutdown_rounds} fresh containers per mode, {INVOCATIONS} invocations each; "
        f"{killed} of {2 * shutdown_rounds} reached Lambda's SIGKILL at +{KILL_S * 1000:.0f} ms.",
        "",
        "| runtime client polls on | p50 ms | p99 ms | max ms | ended by the main thread's"
        " handler (SIGTERM) / by the watcher thread (0) |",
        "|---|---|---|---|---|",
    ]
    for mode, label in (
        ("thread", "a background thread (`AWS_Lambda_python3.12`+)"),
        ("main", "the main thread (`python3.11` and older, unset)"),
    ):
        values = shutdown[mode]
        by_handler, by_watcher = exits[mode].get(-15, 0), exits[mode].get(0, 0)
        lines.append(
            f"| {label} | {statistics.median(values):.1f} | {nearest_rank(values, 99):.1f} | "
            f"{max(values):.1f} | {by_handler} / {by_watcher} |"
        )
    worst = max(nearest_rank(v, 99) for v in shutdown.values())
    lines += [
        "",
        f"Target p99 ≤ {TARGET_SHUTDOWN_P99_MS:.0f} ms: {worst:.1f} ms, "
        f"{'PASS' if worst <= TARGET_SHUTDOWN_P99_MS and not killed else 'FAIL'}.",
        "",
        "### Cold start with the extension, under the real runtime client",
        "",
        f"{cold_rounds} rounds, after one warm-up each.",
        "",
        "| variant | p50 ms | p90 ms | paired vs none, p50 ms | registration p50 ms: wall"
        " / CPU (in the function) |",
        "|---|---|---|---|---|",
    ]
    base = cold["none"]
    for variant, label in COLD_VARIANTS.items():
        values = cold[variant]
        paired = statistics.median(v - b for v, b in zip(values, base, strict=True))
        wall = statistics.median(w for w, _ in register[variant])
        cpu = statistics.median(c for _, c in register[variant])
        lines.append(
            f"| {label} | {statistics.median(values):.1f} | {nearest_rank(values, 90):.1f} | "
            f"{paired:+.1f} | {wall:.2f} / {cpu:.2f} |"
        )
    added = statistics.median(w for w, _ in register["http.client"])
    added_cpu = statistics.median(c for _, c in register["http.client"])
    paired = statistics.median(v - b for v, b in zip(cold["http.client"], base, strict=True))
    lines += [
        "",
        f"Target: the extension adds at most +{TARGET_COLD_START_MS:.0f} ms. Its registration "
        f"costs the function process p50 {added_cpu:.2f} ms of CPU, "
        f"{'PASS' if added_cpu <= TARGET_COLD_START_MS else 'FAIL'}; in wall time {added:.2f} "
        f"ms. The whole cold start, paired with no extension: {paired:+.1f} ms p50.",
    ]
    return "\n".join(lines)
