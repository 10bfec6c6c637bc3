"""What an operator sees during and after a database outage, measured with a real Prometheus.

    .venv/bin/python -m tools.standins.outage_story --outage-s 120     # a 2-minute outage
    .venv/bin/python -m tools.standins.outage_story --outage-s 600     # a 10-minute outage

A PostgreSQL cluster of its own, the local gateway with this shell's settings (the
defaults of ops.config for those it does not set), and Prometheus
(Debian's `prometheus`) loading the shipped alerts.yml and recording-rules.yml
unchanged, scraping every --scrape-s seconds. Probe traffic runs throughout:
/health/live (answers 200 through the outage: its counts are held by the health
"container") and /health (503 during the outage: a 503 series that did not exist
before). The database is stopped after --before-s, started again after
--outage-s, and Prometheus is watched for --after-s more. Prints the timeline and
what rate()/increase() over the rules' 5-minute window showed, against the
calls actually made. Loopback only, free ports; takes before + outage + after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.localdb.migrate import apply_url
from tools.localdb.pgcluster import PgCluster
from tools.standins.prometheus import Prometheus, get, local_gateway, prometheus

TOKEN = "outage-story"
LIVE = 'http_requests_total{route="/health/live",status="200"}'
DOWN = 'http_requests_total{route="/health",status="503"}'


def _status(url: str) -> int:
    try:
        return get(url)[0]
    except OSError:
        return 0


def _query(prom: Prometheus, promql: str) -> list[dict[str, Any]]:
    try:
        return prom.query(promql)
    except OSError:
        return []


def _value(prom: Prometheus, promql: str) -> float | None:
    result = _query(prom, promql)
    return sum(float(r["value"][1]) for r in result) if result else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-s", type=float, default=120)
    parser.add_argument("--before-s", type=float, default=120)
    parser.add_argument("--after-s", type=float, default=420)
    parser.add_argument("--scrape-s", type=int, default=15)
    parser.add_argument("--probe-interval-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    prometheus_bin = shutil.which("prometheus")
    if not prometheus_bin:
        sys.exit("prometheus not found: apt-get install prometheus")

    work = Path(tempfile.mkdtemp(prefix="outage-story-"))
    cluster = PgCluster(work / "pg")
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    url = cluster.create_database("story")
    apply_url(url)
    interval = f"{args.scrape_s}s"
    monitoring = ROOT / "infra" / "monitoring"
    try:
        with local_gateway({"DATABASE_URL": url, "METRICS_AUTH_TOKEN": TOKEN}) as base:
            job = {
                "job_name": "realestate-backend",
                "scrape_timeout": f"{min(10, args.scrape_s)}s",
                "authorization": {"type": "Bearer", "credentials": TOKEN},
                "static_configs": [{"targets": [base.removeprefix("http://")]}],
            }
            rule_files = [monitoring / "alerts.yml", monitoring / "recording-rules.yml"]
            with prometheus(
                prometheus_bin, [job], interval=interval, rule_files=rule_files
            ) as prom:
                story = _watch(args, cluster, base, prom)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    from ops.config import settings

    cfg = settings()  # what the gateway's workers read too (they inherit this environment)
    print(
        f"outage {args.outage_s:g}s, scrape/eval every {interval}, shipped rules, "
        f"METRICS_FLUSH_INTERVAL_S {cfg.metrics_flush_interval_s:g}, "
        f"METRICS_NEW_SERIES_HOLD_S {cfg.metrics_new_series_hold_s:g}"
    )
    print("\n".join(story.events))
    print(f"calls made: {dict(sorted((f'{p} {s}', n) for (p, s), n in story.sent.items()))}")
    print(f"/health/live 200s during the outage: {story.live_during_outage}")
    print(json.dumps(story.totals, indent=1))
    print("  t phase   up db  live  inc5m(live)  503s  inc5m(503)  5xx-ratio")
    for r in story.rows[::3]:
        print(
            f"{r['t']:4.0f} {r['phase']:7} {_f(r['up'])} {_f(r['database_up'])} {_f(r['live'])}"
            f" {_f(r['live_inc5m'])} {_f(r['down'])} {_f(r['down_inc5m'])} {_f(r['ratio'])}"
        )
    return 0


@dataclass
class Story:
    sent: Counter[tuple[str, int]] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    live_during_outage: int = 0


def _watch(args: argparse.Namespace, cluster: PgCluster, base: str, prom: Prometheus) -> Story:
    """Probe traffic throughout; the database stopped and started; Prometheus watched."""
    story = Story()
    sent, events, rows = story.sent, story.events, story.rows
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for path in ("/health/live", "/health"):
                sent[(path, _status(base + path))] += 1
            stop.wait(args.probe_interval_s)

    threading.Thread(target=traffic, daemon=True).start()
    started = time.monotonic()
    t_stop = args.before_s
    t_start = t_stop + args.outage_s
    t_end = t_start + args.after_s
    firing_seen: dict[str, float] = {}
    resolved_at: dict[str, float] = {}
    live_at_stop = 0
    phase = "before"
    try:
        while (now := time.monotonic() - started) < t_end:
            if phase == "before" and now >= t_stop:
                live_at_stop = sent[("/health/live", 200)]
                cluster.stop()
                phase = "outage"
                events.append(f"{now:6.0f}s  database stopped")
            elif phase == "outage" and now >= t_start:
                story.live_during_outage = sent[("/health/live", 200)] - live_at_stop
                cluster.start()
                cluster.wait_ready()
                phase = "after"
                events.append(f"{now:6.0f}s  database started")
            firing = {
                r["metric"]["alertname"]
                for r in _query(prom, 'ALERTS{alertstate="firing"}')
                if r["metric"].get("job", "realestate-backend") == "realestate-backend"
            }
            for name in firing - set(firing_seen):
                firing_seen[name] = now
                events.append(f"{now:6.0f}s  {name} firing")
            for name in set(firing_seen) - firing - set(resolved_at):
                resolved_at[name] = now
                events.append(f"{now:6.0f}s  {name} resolved")
            rows.append(
                {
                    "t": now,
                    "phase": phase,
                    "up": _value(prom, 'up{job="realestate-backend"}'),
                    "database_up": _value(prom, "database_up"),
                    "live": _value(prom, LIVE),
                    "live_inc5m": _value(prom, f"increase({LIVE}[5m])"),
                    "down": _value(prom, DOWN),
                    "down_inc5m": _value(prom, f"increase({DOWN}[5m])"),
                    "ratio": _value(prom, "job:http_requests_5xx:ratio_rate5m"),
                }
            )
            time.sleep(5)
        stop.set()
        time.sleep(1)
        span = f"{int(t_end) + 60}s"
        story.totals = {
            "live_total": _value(prom, LIVE),
            "down_total": _value(prom, DOWN),
            "live_increase_whole_run": _value(prom, f"increase({LIVE}[{span}])"),
            "down_increase_whole_run": _value(prom, f"increase({DOWN}[{span}])"),
            "max_live_inc5m_after": max(
                (r["live_inc5m"] or 0 for r in rows if r["phase"] == "after"), default=0
            ),
            "max_down_inc5m_after": max(
                (r["down_inc5m"] or 0 for r in rows if r["phase"] == "after"), default=0
            ),
            "min_up": min((r["up"] for r in rows if r["up"] is not None), default=None),
        }
    finally:
        stop.set()
    return story


def _f(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.0f}" if value >= 1 else f"{value:5.2f}"


if __name__ == "__main__":
    sys.exit(main())
