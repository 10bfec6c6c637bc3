"""The fleet benchmark's plan and targets, shared by the suite (benchmarks/suite_fleet.py)
and its report (benchmarks/fleet_report.py)."""

from __future__ import annotations

from dataclasses import dataclass

PROD_RATE = 10.0  # invocations/s per container the targets are about
FRESH_S = 15.0  # counts reach Prometheus within this (issue 23 item 2)
TARGET_CORES, TARGET_WAL_GB_DAY = 0.1, 5.0
MAX_CLIENT_CONN = 2000  # docs/capacity.md ships this pgbouncer setting (stock: 100)
HOUR_LIFETIME_S = 3600.0  # the containers' mean lifetime the projections assume
HOT_PER_WORKER = 2  # identities at PROD_RATE: a production write's rows, the bound at r T >> 1


@dataclass(frozen=True)
class Phase:
    name: str
    interval: float  # METRICS_FLUSH_INTERVAL_S
    scrape_s: float  # Prometheus' scrape interval
    separate: bool  # flushes to METRICS_DATABASE_URL


@dataclass(frozen=True)
class Plan:
    identities: int
    workers: int
    rate: float  # per identity
    hot: int  # identities served at PROD_RATE instead, HOT_PER_WORKER per worker
    lifetime_s: float  # mean
    phase_s: float
    warmup_s: float
    tail_s: float
    phases: tuple[Phase, ...]
