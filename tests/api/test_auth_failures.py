"""Refused tokens are counted by route and reason, stored like every counter, and a burst
of them fires AuthFailureBurst: the handlers' own count, scraped from the real /metrics,
is what promtool's test of the real rule is fed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pg8000.native
import pytest
import yaml

from tests.support.binaries import require_binary
from tests.support.metrics import TOKEN, metrics_database, parse, scrape, truncate_metrics
from tests.support.monitoring import MONITORING
from tests.support.runtime import call_api, function_handler
from tools.localdb.pgcluster import PgCluster

GUESSES = 50
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def auth_db(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "auth_failures")


@pytest.fixture
def protected(
    auth_db: str,
    pg_connect: Callable[..., pg8000.native.Connection],
    app_env: Callable[..., None],
) -> str:
    from tests.support.db import runner

    truncate_metrics(runner(pg_connect(auth_db)))
    # Every invocation flushes: the scrape below reads what the 401s recorded.
    app_env(DATABASE_URL=auth_db, METRICS_AUTH_TOKEN=TOKEN, METRICS_FLUSH_INTERVAL_S="0")
    return auth_db


def _failures() -> dict[tuple[str, str], float]:
    # The 401s are latency-critical: each hands its flush to the flush thread and returns, and a
    # flush started while one runs keeps its deltas for the next. Send what is pending first.
    from ops.metrics import flush

    assert flush(), "the pending counts were not stored"
    status, _, body = scrape(AUTHORIZED)
    assert status == 200, body
    samples = parse(body)
    return {
        (dict(labels)["route"], dict(labels)["reason"]): v
        for (name, labels), v in samples.items()
        if name == "auth_failures_total"
    }


def test_fifty_wrong_tokens_count_fifty_and_fire_the_burst_alert(
    protected: str, tmp_path: Path
) -> None:
    health = function_handler("health")
    for i in range(GUESSES):
        status, _, _ = call_api(
            health, "/health/detailed", headers={"Authorization": f"Bearer guess-{i:04d}"}
        )
        assert status == 401
    for authorization in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ):
        assert call_api(health, "/health/detailed", headers=authorization)[0] == 401
    assert call_api(health, "/health/detailed", headers=AUTHORIZED)[0] == 200
    status, _, _ = scrape({"Authorization": "Bearer wrong"})  # /metrics counts its own refusals
    assert status == 401

    failures = _failures()
    assert failures[("/health/detailed", "wrong")] == GUESSES + 1  # the Basic one is a guess too
    assert failures[("/health/detailed", "missing")] == 2  # no header; `Bearer` and nothing
    assert failures[("/metrics", "wrong")] == 1
    assert ("/health/detailed", "misconfigured") not in failures  # never recorded: no series

    # The rule, fed what the handlers counted: a scrape before the burst, then this one.
    promtool = require_binary("promtool")
    counted = int(failures[("/health/detailed", "wrong")])
    test_file = tmp_path / "burst.test.yml"
    series = 'auth_failures_total{route="/health/detailed",reason="wrong",job="j",instance="i"}'
    fired = {
        "exp_labels": {"severity": "warning", "route": "/health/detailed"},
        "exp_annotations": {
            "summary": "Burst of refused tokens on /health/detailed"
            " (someone may be guessing the token)",
            "description": f"{counted} requests to /health/detailed were refused for a missing"
            " or wrong bearer token over the last 5 minutes (threshold 30 for 1m).",
            "runbook": "infra/monitoring/README.md#authfailureburst",
        },
    }
    test = {
        "interval": "1m",
        "input_series": [{"series": series, "values": f"0 0 {counted}x10"}],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "AuthFailureBurst", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "AuthFailureBurst", "exp_alerts": [fired]},
        ],
    }
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(MONITORING / "alerts.yml")],
                "evaluation_interval": "1m",
                "tests": [test],
            }
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_misconfigured_token_counts_as_misconfigured(
    protected: str, app_env: Callable[..., None]
) -> None:
    health = function_handler("health")
    app_env(METRICS_AUTH_TOKEN="   ")  # configured, but blank: 503, never open
    for _ in range(3):
        assert call_api(health, "/health/detailed", headers=AUTHORIZED)[0] == 503
    from ops.metrics import flush

    assert flush()  # stored before the token is fixed (a new container: nothing pending)
    app_env(METRICS_AUTH_TOKEN=TOKEN)
    assert _failures() == {("/health/detailed", "misconfigured"): 3.0}


def test_an_unknown_reason_is_refused_by_the_catalogue() -> None:
    from ops.metrics import catalogue as m

    with pytest.raises(ValueError, match="reason must be one of"):
        m.AUTH_FAILURES.labels(route="/metrics", reason="expired")
