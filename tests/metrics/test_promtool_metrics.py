"""`promtool check metrics` on a real scrape with every catalogue family populated.

Every recorded family (counter, histogram, gauge) gets a recording, flushed to a real
PostgreSQL; the live gauges come from that database at scrape time (a session, a
policy table with a row and a completed prune). The metrics handler's body, plain
text, goes to promtool: exit 0 and not a line printed, so a team's CI gate on it
passes; the OpenMetrics body carries the same names and parses strictly. A family
with no sample here would escape the lint, so the test insists that every family has one.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

import ops.metrics.catalogue  # noqa: F401 - defining the families fills the registry
from ops.metrics import flush
from ops.metrics.families import COUNTER, GAUGE, HISTOGRAM, REGISTRY, Family
from tests.support.binaries import require_binary
from tests.support.db import SQL, PgConnect, runner
from tests.support.metrics import metrics_database, parse, scrape, truncate_metrics
from tests.support.runtime import AppEnv
from tools.localdb.pgcluster import PgCluster

TEXT = "text/plain;version=0.0.4"
# Read only where pg_stat_statements is loaded at server start: promtool lints them in
# tests/metrics/test_database_gauges.py, on a cluster of its own that loads it.
NEED_PG_STAT_STATEMENTS = {
    "pg_stat_statements_mean_seconds",
    "pg_stat_statements_calls_total",
    "pg_stat_statements_seconds_total",
}
OPENMETRICS = "application/openmetrics-text;version=1.0.0"


@pytest.fixture(scope="module")
def lint_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_promtool")


@pytest.fixture
def own_sql(lint_url: str, pg_connect: PgConnect) -> SQL:
    return runner(pg_connect(lint_url))


@pytest.fixture
def populated(lint_url: str, own_sql: SQL, app_env: AppEnv) -> None:
    """Every recorded family with a sample in the store, every live gauge with a source."""
    truncate_metrics(own_sql)
    own_sql("TRUNCATE chat_sessions")
    own_sql("INSERT INTO chat_sessions (channel, user_ref, updated_at) VALUES ('wa', 'u', now())")
    own_sql(
        "INSERT INTO audit_logs (occurred_at, actor_type, actor_id, action, entity, payload)"
        " VALUES (now(), 'system', 'retention-job', 'retention.prune', 'chat_sessions',"
        ' \'{"completed": true, "deleted": 1}\')'
    )
    policies = [{"table": "chat_sessions", "column": "updated_at", "maxAgeDays": 90}]
    app_env(DATABASE_URL=lint_url, RETENTION_POLICIES=json.dumps(policies))
    for family in REGISTRY.values():  # the catalogue's families (and any a test left)
        if not family.live:
            _record(family)
    assert flush() is True


def _record(family: Family[Any]) -> None:
    values = [sorted(family.allowed.get(n) or ("x",))[0] for n in family.labelnames]
    child = family.labels(*values)
    if family.kind == COUNTER:
        child.inc()
    elif family.kind == HISTOGRAM:
        child.observe(0.042)  # seconds
    elif family.kind == GAUGE:
        child.set(1.0)
    else:
        raise AssertionError(f"{family.name}: no way to record a {family.kind}")


def _families_with_samples(body: str) -> set[str]:
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines()}
    names.discard("")
    return {
        f.name
        for f in REGISTRY.values()
        if any(re.fullmatch(rf"{f.name}(_bucket|_count|_sum)?", n) for n in names if n[0] != "#")
    }


def _scrape(accept: str) -> str:
    status, headers, body = scrape({"Accept": accept})
    assert status == 200, body
    assert headers["Content-Type"].startswith(accept.split(";")[0])
    missing = set(REGISTRY) - _families_with_samples(body) - NEED_PG_STAT_STATEMENTS
    assert not missing, f"families without a sample (give them traffic here): {sorted(missing)}"
    return str(body)


def test_promtool_check_metrics_passes_on_every_family(populated: None) -> None:
    promtool = require_binary("promtool")
    body = _scrape(TEXT)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (proc.stdout + proc.stderr).strip()


def test_openmetrics_has_the_linted_names_and_parses_strictly(populated: None) -> None:
    """promtool reads only the text format (prometheus/prometheus#8932): on OpenMetrics it
    would report each counter family, named without `_total` there, as lacking HELP. The
    OpenMetrics body must carry exactly the sample names the text body has (those promtool
    lints) and pass prometheus_client's OpenMetrics parser, which rejects what the spec does."""
    om = parse(_scrape(OPENMETRICS), openmetrics=True)
    text = parse(_scrape(TEXT))
    assert {name for name, _ in om} == {name for name, _ in text}
