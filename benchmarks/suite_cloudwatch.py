"""What a container prints for CloudWatch (issue 23 item 4): EMF bytes and request-line
bytes per invocation, amortised at a steady rate, against today's baseline measured in
the same run (METRICS_FLUSH_INTERVAL_S=0: a document set per invocation, every line).

The health function runs in this process on a loopback PostgreSQL, invoked at a steady
RATE per second on a simulated clock (ops.metrics.emf's `time`: the windows follow the
invocations' spacing, not this machine's speed, so load does not change the bytes);
everything it prints is counted by kind. Traffic: probe-only (/health/live, /health/ready,
/health in turn) and mixed (those, /health/detailed, and two unrouted paths answered 404:
non-probe `http_requests`, the health function's only other traffic).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os

from benchmarks.lambda_variants import database

RATE = 10.0  # invocations per second per container
TARGET_BYTES = 50.0  # EMF per invocation at the recommended interval (docs/cloudwatch.md)
RECOMMENDED_INTERVAL_S = 10.0
INTERVALS = (0.0, 1.0, 10.0)  # 0: the baseline
PROBES = ("/health/live", "/health/ready", "/health")
MIXED = (*PROBES, "/health/live", "/api/users", "/api/orders", "/health/detailed")


def measure(
    url: str, interval: float, paths: tuple[str, ...], n: int, rate: float
) -> dict[str, float]:
    from ops.log import ProbeLogSampling, logger
    from ops.metrics.catalogue import PROBE_ROUTES
    from tests.support.metrics import EmfClock
    from tests.support.runtime import call_api, function_handler, reset_runtime

    os.environ.update(
        DATABASE_URL=url,
        METRICS_FLUSH_INTERVAL_S=str(interval),
        POWERTOOLS_METRICS_NAMESPACE="Bench",
        METRICS_NEW_SERIES_HOLD_S="0",
        PROBE_LOG_SAMPLE_RATE="1",  # every line: the sample is taken from them below
    )
    reset_runtime()
    handler = function_handler("health")
    out = io.StringIO()
    log_handler = logger.registered_handler
    assert isinstance(log_handler, logging.StreamHandler)
    stream = log_handler.setStream(out)
    sampled = ProbeLogSampling(frozenset(PROBE_ROUTES), 0.1)
    counts: dict[str, float] = {"emf": 0, "emf_docs": 0, "request": 0, "request_sampled": 0}
    try:
        with contextlib.redirect_stdout(out), EmfClock() as clock:
            for i in range(n):
                clock.t = i / rate
                call_api(handler, paths[i % len(paths)])
            from ops import metrics

            metrics.flush()  # the shutdown drain: nothing left behind
        # The same request lines at PROBE_LOG_SAMPLE_RATE=0.1: what would have been written.
        for line in out.getvalue().splitlines():
            size = len(line.encode()) + 1
            if line.startswith('{"_aws"'):
                counts["emf"] += size
                counts["emf_docs"] += 1
            elif '"type":"request"' in line:
                counts["request"] += size
                doc = json.loads(line)
                write, represents = sampled.admit(doc["route"], doc["statusCode"])
                if write:
                    counts["request_sampled"] += size + (len(',"linesRepresented":') + 2) * (
                        represents is not None
                    )
    finally:
        log_handler.setStream(stream)
    return {k: v / n for k, v in counts.items()}


def run(quick: bool) -> str:
    n = int(RATE * (30 if quick else 120))
    rows, verdicts = [], []
    with database() as url:
        for traffic, paths in (("probe-only", PROBES), ("mixed", MIXED)):
            base = None
            for interval in INTERVALS:
                r = measure(url, interval, paths, n, RATE)
                base = base or r
                ratio = r["emf"] / base["emf"]
                rows.append(
                    f"| {traffic} | {interval:g} | {r['emf']:.1f} | {r['emf_docs']:.3f} |"
                    f" {ratio:.3f} | {r['request']:.0f} | {r['request_sampled']:.0f} |"
                )
                if interval == RECOMMENDED_INTERVAL_S:
                    ok = "PASS" if r["emf"] <= TARGET_BYTES else "FAIL"
                    verdicts.append(
                        f"- {ok}: {traffic}, interval {interval:g} s: EMF {r['emf']:.1f} bytes"
                        f" per invocation (target ≤ {TARGET_BYTES:g})"
                    )
    return "\n".join(
        [
            f"{n} invocations per row at {RATE:g}/s (simulated clock).",
            "",
            "| traffic | interval (s) | EMF bytes/inv | EMF docs/inv | ratio |"
            " request bytes/inv | at sample rate 0.1 |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            *verdicts,
        ]
    )
