"""End to end: a real Prometheus scrapes the local gateway while the database goes down and
comes back. A PostgreSQL cluster of the test's own is stopped and started; the handlers run
in gateway worker processes (warm "containers"); the alert rules are the shipped ones with
short `for:`; scrape and evaluation every second. Bounded: each wait has a deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.prometheus import (
    Prometheus,
    get,
    local_gateway,
    prometheus,
    shipped_alert_rules,
)
from tools.localdb.migrate import apply_url
from tools.localdb.pgcluster import PgCluster, running_cluster

TOKEN = "outage-e2e-token"
JOB = "realestate-backend"
HEALTH_503 = 'http_requests_total{route="/health",status="503"}'
FIRING = 'ALERTS{alertname="DatabaseDown",alertstate="firing"}'
DEFERRED_FLUSH_S = 2.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with running_cluster() as pg:  # its own: stopping it must not touch anyone else's database
        yield pg


@pytest.fixture(scope="module")
def stack(cluster: PgCluster) -> Iterator[tuple[str, Prometheus]]:
    url = cluster.create_database("outage")
    apply_url(url)
    env = {
        "DATABASE_URL": url,
        "METRICS_AUTH_TOKEN": TOKEN,
        "HEALTH_DB_TIMEOUT_S": "0.5",
        "DB_CONNECT_TIMEOUT_S": "0.5",
        "METRICS_SCRAPE_BUDGET_S": "0.9",  # within Prometheus' 1 s scrape timeout
        "METRICS_NEW_SERIES_HOLD_S": "3",  # a few scrape intervals
        "METRICS_FLUSH_INTERVAL_S": str(DEFERRED_FLUSH_S),
    }
    job: dict[str, Any] = {
        "job_name": JOB,
        "metrics_path": "/metrics",
        "authorization": {"type": "Bearer", "credentials": TOKEN},
    }
    with local_gateway(env) as base:
        job["static_configs"] = [{"targets": [base.removeprefix("http://")]}]
        with prometheus([job], shipped_alert_rules()) as prom:
            yield base, prom


def _health(base: str, times: int) -> list[int]:
    return [get(f"{base}/health")[0] for _ in range(times)]


@pytest.mark.slow
def test_a_database_outage_is_seen_alerted_and_counted(
    cluster: PgCluster, stack: tuple[str, Prometheus]
) -> None:
    base, prom = stack
    assert set(_health(base, 5)) == {200}
    prom.wait_for(
        "up == 1 and database_up == 1",
        lambda: prom.value(f'up{{job="{JOB}"}}') == 1 and prom.value("database_up") == 1,
        30,
    )

    cluster.stop()
    # Within 30 s: database_up 0 and DatabaseDown firing, while the scrape itself stays up.
    prom.wait_for(
        "database_up == 0 and DatabaseDown firing",
        lambda: prom.value("database_up") == 0 and prom.value(FIRING) == 1,
        30,
    )
    assert prom.value(f'up{{job="{JOB}"}}') == 1
    assert prom.value(f'min_over_time(up{{job="{JOB}"}}[10s])') == 1  # never a failed scrape
    outage_503s = _health(base, 20)
    assert outage_503s == [503] * 20  # held by the health worker: its flushes fail
    assert prom.query(HEALTH_503) == []  # not stored, and never a made-up zero

    cluster.start()
    cluster.wait_ready()
    prom.wait_for(
        "database_up == 1 and DatabaseDown resolved",
        lambda: prom.value("database_up") == 1 and prom.value(FIRING) is None,
        30,
    )
    # The next flushing call stores what the health worker held; the 503 series is born
    # now with value 20, exposed at 0 first, so increase() counts all of it.
    assert get(f"{base}/health/detailed", TOKEN)[0] == 200
    prom.wait_for(
        "the 503s stored", lambda: prom.value(f"max_over_time({HEALTH_503}[1m])") == 20, 30
    )
    counted = prom.wait_for(
        "increase() counting the 503s",
        lambda: (prom.value(f"increase({HEALTH_503}[1m])") or 0) >= 20,
        15,
    )
    assert counted
    # The series was seen at 0 before its value: the first sample Prometheus has is 0.
    history = prom.query(f"{HEALTH_503}[1m]")[0]["values"]
    assert float(history[0][1]) == 0 and float(history[-1][1]) == 20


@pytest.mark.slow
def test_probe_calls_then_silence_reach_prometheus(stack: tuple[str, Prometheus]) -> None:
    base, prom = stack
    ok = 'http_requests_total{route="/health",status="200"}'
    assert _health(base, 1) == [200]
    # Its count reaches the store within the deferral window (the worker's idle flush),
    # and the next scrape: wait that long before reading a settled value.
    time.sleep(DEFERRED_FLUSH_S + 2 * 1.0)
    prom.wait_for("the 200 series", lambda: prom.value(ok), 30)
    prom.wait_for("a steady value", lambda: prom.value(f"changes({ok}[3s])") == 0, 30)
    before = prom.value(ok) or 0
    assert _health(base, 50) == [200] * 50
    # Then no traffic at all but the scrapes: two scrapes plus the deferral window.
    prom.wait_for(
        "+50 without further traffic",
        lambda: prom.value(ok) == before + 50,
        2 * 1.0 + DEFERRED_FLUSH_S + 1.0,
    )
