"""What the SLO rules cost Prometheus: each evaluation reads every API series over up to
30 days (slo.rules.yml), against the dashboard's 5-minute recording rules.

A real Prometheus loads TSDB blocks backfilled with `promtool tsdb create-blocks-from
openmetrics`: some days of samples every 30 s (the scrape interval of prometheus.yml)
for the API routes and the five probe routes (http_requests_total for 200 and 500,
http_request_duration_seconds_bucket le="0.2" and _count). It evaluates slo.rules.yml and
recording-rules.yml every EVAL_S (the budget group keeps its own 5-minute interval);
each group's `evaluationTime` is read from /api/v1/rules. The 30-day ratios read every
sample there is, so with N days of data they cost what an N-day window does, and 30
days cost 30/N times that (reads scale with the samples read).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.standins.prom import binary
from tools.standins.prometheus import prometheus

MONITORING = ROOT / "infra" / "monitoring"
STEP_S = 30
EVAL_S = 2
PROBES = ("/health", "/health/live", "/health/ready", "/health/detailed", "/metrics")
# The group must evaluate in this share of the evaluation interval (prometheus.yml: 30 s).
LIMIT_SHARE = 0.05


def _openmetrics(path: Path, routes: list[str], days: float, end: float) -> int:
    """Counters growing 100/min per route (0.2% 500s, 5% above 200 ms)."""
    steps = int(days * 86400 / STEP_S)
    start = end - steps * STEP_S
    per_step = 100 * STEP_S / 60
    families = {
        "http_requests_total": [
            (f'method="GET",route="{r}",status="{s}"', per_step * share)
            for r in routes
            for s, share in (("200", 0.998), ("500", 0.002))
        ],
        "http_request_duration_seconds_bucket": [
            (f'method="GET",route="{r}",le="0.2"', per_step * 0.95) for r in routes
        ],
        "http_request_duration_seconds_count": [
            (f'method="GET",route="{r}"', per_step) for r in routes
        ],
    }
    lines = 0
    with path.open("w") as out:
        for name, series in families.items():
            out.write(f"# TYPE {name} unknown\n")
            for labels, step in series:
                labels += ',job="realestate-backend",instance="api:443"'
                for i in range(steps + 1):
                    out.write(f"{name}{{{labels}}} {i * step:.1f} {start + i * STEP_S}\n")
                    lines += 1
        out.write("# EOF\n")
    return lines


def _rules(api: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/api/v1/rules", timeout=10) as resp:
        return {g["name"]: g for g in json.loads(resp.read())["data"]["groups"]}


def run(quick: bool) -> str:
    routes_n, days, rounds = (5, 0.5, 5) if quick else (20, 3, 30)
    routes = [f"/api/r{i}" for i in range(routes_n)] + list(PROBES)
    work = Path(tempfile.mkdtemp(prefix="bench-slo-"))
    try:
        data = work / "data"
        started = time.perf_counter()
        samples = _openmetrics(work / "input.om", routes, days, time.time() - 60)
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", "input.om", str(data)],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=1800,
        )
        (work / "input.om").unlink()
        setup_s = time.perf_counter() - started
        rules = [MONITORING / "slo.rules.yml", MONITORING / "recording-rules.yml"]
        slo: list[float] = []
        baseline: list[float] = []
        budget = 0.0
        per_rule: dict[str, list[float]] = {}
        with prometheus(binary(), [], interval=f"{EVAL_S}s", rule_files=rules, tsdb=data) as server:
            deadline = time.monotonic() + 420  # the budget group runs once in 5 min
            while time.monotonic() < deadline and (len(slo) < rounds or not budget):
                time.sleep(EVAL_S)
                try:
                    groups = _rules(server.url)
                except OSError:
                    continue
                group = groups.get("realestate-backend-slo", {})
                if group.get("evaluationTime"):
                    slo.append(group["evaluationTime"])
                    baseline.append(groups["realestate-backend-recording"]["evaluationTime"])
                    for rule in group["rules"]:
                        window = rule["name"].removeprefix("slo:sli_error:ratio_rate")
                        if rule["type"] == "recording" and window != rule["name"]:
                            per_rule.setdefault(window, []).append(rule["evaluationTime"])
                budget = groups.get("realestate-backend-slo-budget", {}).get("evaluationTime", 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert slo and budget, "Prometheus never evaluated the SLO rules"
    slo_ms, base_ms = statistics.median(slo) * 1000, statistics.median(baseline) * 1000
    ratio = statistics.median(s / b for s, b in zip(slo, baseline, strict=True))
    share = slo_ms / 1000 / 30
    budget_30d_s = budget * 30 / days
    budget_share = budget_30d_s / 300
    results = ["**PASS**" if x <= LIMIT_SHARE else "**FAIL**" for x in (share, budget_share)]
    series = len(routes) * 4
    windows = " | ".join(f"{w}" for w in per_rule)
    costs = " | ".join(f"{statistics.median(t) * 1000:.1f}" for t in per_rule.values())
    return f"""\
{routes_n} API routes and the 5 probe routes, {series} series, {days:g} days of samples every \
{STEP_S} s ({samples:,} samples; backfill {setup_s:.0f} s); rules evaluated every {EVAL_S} s; \
medians of {len(slo)} evaluations; the 30-day cost estimated as {30 / days:g}x the \
{days:g}-day one.

### Targets

| target | measured | limit | result |
|---|---|---|---|
| alert group (`realestate-backend-slo`): share of the 30 s interval | {share:.2%} | \
{LIMIT_SHARE:.0%} | {results[0]} |
| budget group at 30 days of data (estimated): share of its 5 min interval | \
{budget_share:.2%} | {LIMIT_SHARE:.0%} | {results[1]} |

### Measurements

| rule group | evaluation (ms) |
|---|---|
| `realestate-backend-slo` (14 ratios from 5m to 3d, 4 alerts), every 30 s | {slo_ms:.1f} |
| `realestate-backend-slo-budget` (2 ratios over 30d), every 5 min, {days:g} days of data \
| {budget * 1000:.1f} |
| the same, 30 days of data (x {30 / days:g}, estimated) | {budget_30d_s * 1000:.0f} |
| `realestate-backend-recording` (recording-rules.yml, 5-minute rates), the baseline \
| {base_ms:.1f} |
| alert group / baseline, median of per-evaluation ratios | {ratio:.0f}x |

One ratio rule per window (ms per evaluation, median over both SLOs):

| {windows} |
|{"---|" * len(per_rule)}
| {costs} |
"""
