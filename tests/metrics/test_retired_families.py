"""Rows of a family the catalogue no longer declares (the seed's `_ms` histograms, after
the upgrade to base units): never exposed, never mixed into the `_seconds` family, and
the runbook's DELETE removes them without disturbing a scrape."""

from __future__ import annotations

import re

import pytest

from ops.metrics import catalogue as m
from ops.metrics import flush
from ops.metrics.families import REGISTRY, Histogram
from tests.support.db import SQL, PgConnect, runner
from tests.support.metrics import metrics_database, scrape_samples, truncate_metrics, value
from tests.support.monitoring import runbook_sections
from tests.support.runtime import AppEnv
from tools.localdb.pgcluster import PgCluster

RETIRED = (
    "http_request_duration_ms",
    "tool_call_duration_ms",
    "db_query_duration_ms",
    "health_check_duration_ms",
)


@pytest.fixture(scope="module")
def retired_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_retired")


@pytest.fixture
def own_sql(retired_url: str, pg_connect: PgConnect) -> SQL:
    return runner(pg_connect(retired_url))


def _runbook_delete() -> str:
    section = runbook_sections()["after-upgrading-from-the-_ms-names"]
    (statement,) = re.findall(r"```sql\n(.*?)```", section, re.S)
    return str(statement)


def test_the_runbook_deletes_exactly_the_retired_names() -> None:
    assert set(re.findall(r"'(\w+)'", _runbook_delete())) == set(RETIRED)
    assert not set(RETIRED) & set(REGISTRY)


def test_retired_rows_are_never_exposed_and_the_runbook_removes_them(
    retired_url: str, own_sql: SQL, app_env: AppEnv
) -> None:
    truncate_metrics(own_sql)
    app_env(DATABASE_URL=retired_url, METRICS_NEW_SERIES_HOLD_S="0")
    # What a container of the old version stored: the same series in milliseconds.
    old = Histogram(
        "tool_call_duration_ms", "old", ("tool",), buckets=(50, 100, 5000), registry=None
    )
    old.labels(tool="search").observe(1500)
    m.TOOL_CALL_DURATION.labels(tool="search").observe(1.5)
    assert flush() is True

    before = scrape_samples()
    assert not [name for name, _ in before if name.startswith(RETIRED)]
    assert value(before, "tool_call_duration_seconds_count", tool="search") == 1
    assert value(before, "tool_call_duration_seconds_sum", tool="search") == 1.5

    stored = (
        "SELECT count(*) FROM metric_series AS s JOIN metric_values AS v ON v.series_id = s.id"
        " WHERE s.family = 'tool_call_duration_ms'"
    )
    assert own_sql(stored) != [[0]]
    own_sql(_runbook_delete())
    assert own_sql(stored) == [[0]]
    assert own_sql("SELECT count(*) FROM metric_values") != [[0]]  # the rest stays
    after = scrape_samples()  # a warm metrics container: its cache still names the rows
    for name in ("count", "sum"):
        key = f"tool_call_duration_seconds_{name}"
        assert value(after, key, tool="search") == value(before, key, tool="search")
