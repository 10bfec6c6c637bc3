"""Powertools' metric settings as Powertools documents them (issue 20): POWERTOOLS_METRICS_DISABLED
(and POWERTOOLS_DEV) turn the EMF lines off, never the Prometheus counts; a missing
POWERTOOLS_METRICS_NAMESPACE is a warning, once per container."""

from __future__ import annotations

import pytest

from ops.metrics import catalogue as m
from ops.metrics import flush, reset
from tests.support.db import SQL, PgConnect, runner
from tests.support.metrics import (
    emf_lines,
    metrics_database,
    scrape_samples,
    truncate_metrics,
    value,
)
from tests.support.runtime import AppEnv, LogLines
from tools.localdb.pgcluster import PgCluster


@pytest.fixture(scope="module")
def settings_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "powertools_settings")


@pytest.fixture
def settings_sql(settings_url: str, pg_connect: PgConnect) -> SQL:
    sql = runner(pg_connect(settings_url))
    truncate_metrics(sql)
    return sql


@pytest.mark.parametrize(
    ("env", "emf"),
    [
        ({"POWERTOOLS_METRICS_DISABLED": "true"}, False),
        ({"POWERTOOLS_METRICS_DISABLED": "1"}, False),
        ({"POWERTOOLS_DEV": "true"}, False),  # Powertools: dev mode turns metrics off...
        ({"POWERTOOLS_DEV": "true", "POWERTOOLS_METRICS_DISABLED": "false"}, True),  # ...unless
        ({"POWERTOOLS_METRICS_DISABLED": "false"}, True),
        ({}, True),
    ],
)
def test_metrics_disabled_turns_emf_off_and_prometheus_counts_as_before(
    app_env: AppEnv,
    settings_url: str,
    settings_sql: SQL,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    emf: bool,
) -> None:
    app_env(DATABASE_URL=settings_url, **env)
    m.WEBHOOK_FAILURES.labels(source="stripe").inc(3)
    assert flush()
    samples = scrape_samples()  # the metrics function's own invocation emits EMF too
    assert value(samples, "webhook_failures_total", source="stripe") == 3
    lines = emf_lines(capsys.readouterr().out)
    if emf:
        assert sum(sum(line.get("webhook_failures", [])) for line in lines) == 3
        assert any("http_requests" in line or "health_probe_requests" in line for line in lines)
    else:
        assert lines == []


def test_a_missing_namespace_is_one_warning_per_container(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], log_lines: LogLines
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE")
    reset()
    for _ in range(3):
        m.TOOL_CALLS.labels(tool="search", status="ok").inc()
        assert flush()
    (warning,) = [line for line in log_lines() if line.get("status") == "emf_off"]
    assert warning["level"] == "WARNING" and warning["type"] == "metrics_flush"
    assert "POWERTOOLS_METRICS_NAMESPACE is not set" in warning["message"]
    assert emf_lines(capsys.readouterr().out) == []
    reset()  # a new container warns again
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    assert flush()
    assert len([line for line in log_lines() if line.get("status") == "emf_off"]) == 2


def test_no_warning_when_emf_is_off_on_purpose(
    app_env: AppEnv, monkeypatch: pytest.MonkeyPatch, log_lines: LogLines
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE")
    app_env(POWERTOOLS_METRICS_DISABLED="true")
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    assert flush()
    assert [line for line in log_lines() if line.get("status") == "emf_off"] == []
