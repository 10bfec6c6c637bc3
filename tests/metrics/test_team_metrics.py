"""A team's own metric families (issue 20): declared in its own function, exposed by the
metrics function from the store, mirrored to CloudWatch, one shape per name."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.config import settings
from ops.metrics import container, families, flush, totals
from tests.support.db import SQL, PgConnect, runner
from tests.support.doc_commands import code_block
from tests.support.metrics import (
    emf_lines,
    metrics_database,
    parse,
    scrape,
    scrape_samples,
    truncate_metrics,
    value,
)
from tests.support.runtime import AppEnv, LogLines
from tools import PYTHONPATH, ROOT
from tools.localdb.pgcluster import PgCluster
from tools.standins.prometheus import get, local_gateway

README = ROOT / "README.md"


@pytest.fixture
def team_registry() -> Iterator[Callable[[], None]]:
    """The registry as it was after the test; the callable forgets the test's families
    (a metrics container never imports a team's code)."""
    before = dict(families.REGISTRY)

    def forget() -> None:
        families.REGISTRY.clear()
        families.REGISTRY.update(before)

    yield forget
    forget()


# -- declaring ----------------------------------------------------------------------------


def test_a_team_declares_with_the_public_api(team_registry: Callable[[], None]) -> None:
    from ops.metrics import Counter, Gauge, Histogram

    assert (Counter, Gauge, Histogram) == (families.Counter, families.Gauge, families.Histogram)
    orders = Counter("t20_orders_total", "Orders.", ("outcome",))
    took = Histogram("t20_checkout_duration_seconds", "Checkout.", buckets=(0.1, 1))
    depth = Gauge("t20_queue_depth", "Queue depth.")
    assert orders.team and took.team and depth.team
    assert orders.emf is not None and orders.emf.key({"outcome": "ok"})[:2] == (
        "t20_orders",
        "Count",
    )
    assert took.emf is not None and took.emf.key({})[:2] == (took.name, "Seconds")
    assert Counter("t20_quiet_total", "No EMF.", emf=None).emf is None


SHAPES: list[tuple[Callable[[], Any], Callable[[], Any], str]] = [
    (
        lambda: families.Counter("t20_jobs_total", "Jobs.", ("queue",)),
        lambda: families.Counter("t20_jobs_total", "Jobs.", ("kind",)),
        r"t20_jobs_total is already defined as counter with labels \['queue'\]; this declaration"
        r" has counter with labels \['kind'\]",
    ),
    (
        lambda: families.Gauge("t20_depth", "Depth."),
        lambda: families.Histogram("t20_depth", "Depth.", buckets=(1, 2)),
        r"t20_depth is already defined as gauge .* has histogram with labels \[\] and buckets",
    ),
    (
        lambda: families.Histogram("t20_took_seconds", "Took.", buckets=(1, 2)),
        lambda: families.Histogram("t20_took_seconds", "Took.", buckets=(1, 5)),
        r"t20_took_seconds is already defined .*buckets \[1.0, 2.0\].*buckets \[1.0, 5.0\]",
    ),
    (
        lambda: families.Counter("t20_runs_total", "Runs."),
        lambda: families.Counter("t20_runs_total", "Other runs."),
        r"t20_runs_total is already defined .* has another help text",
    ),
    (
        lambda: None,
        lambda: families.Counter("http_requests_total", "Mine.", ("method", "route", "status")),
        r"http_requests_total is already defined by the catalogue",
    ),
]


@pytest.mark.parametrize(("first", "second", "message"), SHAPES)
def test_a_conflicting_declaration_fails_naming_the_family(
    team_registry: Callable[[], None],
    first: Callable[[], object],
    second: Callable[[], object],
    message: str,
) -> None:
    first()
    with pytest.raises(ValueError, match=message):
        second()


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: families.Counter("t20-bad_total", "x"), "'t20-bad_total' is not a Prometheus"),
        (lambda: families.Gauge("t20_g", "x", ("__x",)), "'__x' is not a Prometheus label name"),
        (lambda: families.Gauge("t20_g", "x", ("a", "a")), r"label names repeat: \['a', 'a'\]"),
        (lambda: families.Gauge("t20_g", " "), "t20_g: the help text must be a non-empty"),
    ],
)
def test_a_malformed_declaration_fails_naming_the_family(
    team_registry: Callable[[], None], declare: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        declare()
    assert not any(name.startswith("t20") for name in families.REGISTRY)


def test_the_catalogue_is_reserved_before_a_team_s_first_declaration() -> None:
    """In a fresh process whose first metrics import is the team's own declaration."""
    code = (
        "from ops.metrics import Counter\nCounter('webhook_failures_total', 'Mine.', ('source',))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "webhook_failures_total is already defined by the catalogue" in proc.stderr


# -- the store: one shape per name across functions ---------------------------------------


@pytest.fixture(scope="module")
def team_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "team_metrics")


@pytest.fixture
def team_sql(team_url: str, pg_connect: PgConnect) -> SQL:
    sql = runner(pg_connect(team_url))
    truncate_metrics(sql)
    return sql


def _container(app_env: AppEnv, team_url: str, function: str) -> None:
    """A new container of `function` (the caches of the last one are gone)."""
    app_env(DATABASE_URL=team_url, AWS_LAMBDA_FUNCTION_NAME=function)


def test_the_store_keeps_one_shape_per_name_and_refuses_another_function_s(
    app_env: AppEnv,
    monkeypatch: pytest.MonkeyPatch,
    team_url: str,
    team_sql: SQL,
    team_registry: Callable[[], None],
    log_lines: LogLines,
) -> None:
    _container(app_env, team_url, "OrdersFunction")
    jobs = families.Counter("t20_jobs_total", "Jobs, by queue.", ("queue",))
    jobs.labels(queue="a").inc(2)
    assert flush()
    rows = team_sql("SELECT family, kind, help, labels, buckets, declared_by FROM metric_families")
    assert rows == [
        ["t20_jobs_total", "counter", "Jobs, by queue.", ["queue"], [], "OrdersFunction"]
    ]

    # Another function declares the name with other labels: refused at its flush, loudly.
    team_registry()
    _container(app_env, team_url, "BillingFunction")
    theirs = families.Counter("t20_jobs_total", "Jobs, by kind.", ("kind",))
    invoices = families.Histogram("t20_invoice_seconds", "Invoicing.", buckets=(0.5, 2))
    depth = families.Gauge("t20_queue_depth", "Invoices waiting.")
    theirs.labels(kind="x").inc()
    invoices.observe(1.0)
    depth.set(7)
    assert flush()  # the rest is stored
    (refused,) = [line for line in log_lines() if line.get("status") == "refused"]
    assert refused["level"] == "ERROR" and refused["droppedSeries"] == 1
    (reason,) = refused["families"]
    assert reason.startswith("t20_jobs_total: declared by OrdersFunction as counter{queue}")
    assert "BillingFunction declares counter{kind}" in reason
    theirs.labels(kind="x").inc(5)  # later recordings of it are dropped, and counted
    assert flush()
    assert flush()  # the count of the last drop
    assert len([line for line in log_lines() if line.get("status") == "refused"]) == 1

    team_registry()  # the metrics container knows only the catalogue
    _container(app_env, team_url, "MetricsFunction")
    status, _, body = scrape()
    assert status == 200
    assert "# HELP t20_jobs_total Jobs, by queue.\n# TYPE t20_jobs_total counter" in body
    assert "# TYPE t20_invoice_seconds histogram" in body
    samples = parse(body)
    assert value(samples, "t20_jobs_total", queue="a") == 2
    assert not [k for k in samples if k[0] == "t20_jobs_total" and dict(k[1]).get("kind")]
    assert value(samples, "t20_invoice_seconds_bucket", le="0.5") == 0
    assert value(samples, "t20_invoice_seconds_bucket", le="2.0") == 1
    assert value(samples, "t20_invoice_seconds_sum") == 1.0
    assert "# TYPE t20_queue_depth gauge\nt20_queue_depth 7\n" in body
    dropped = {"function": "BillingFunction", "reason": "family_conflict"}
    assert value(samples, "metrics_deltas_dropped_total", **dropped) == 2

    # A new deploy of the declaring function may change the shape: the newest wins, and
    # the warm metrics container (its caches kept) sees it at its next scrape.
    stored = ["t20_invoice_seconds", "t20_jobs_total", "t20_queue_depth"]
    assert [f.name for f in totals.stored_families()] == stored
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "OrdersFunction")
    settings.cache_clear()
    container.replace_default()  # another container's outbox; the metrics side's caches stay warm
    families.Counter("t20_jobs_total", "Jobs, by queue and region.", ("queue", "region"))
    families.REGISTRY["t20_jobs_total"].labels(queue="b", region="eu").inc()
    assert flush()
    team_registry()
    samples = scrape_samples()
    assert value(samples, "t20_jobs_total", queue="a") == 2
    assert value(samples, "t20_jobs_total", queue="b", region="eu") == 1
    assert "# HELP t20_jobs_total Jobs, by queue and region." in scrape()[2]


def test_the_catalogue_s_names_are_reserved_across_functions(
    app_env: AppEnv,
    monkeypatch: pytest.MonkeyPatch,
    team_url: str,
    team_sql: SQL,
    team_registry: Callable[[], None],
    log_lines: LogLines,
) -> None:
    """A team function built on another layer version, whose catalogue lacks a name."""
    _container(app_env, team_url, "MetricsFunction")
    assert scrape()[0] == 200  # its first read reserves the catalogue's names
    rows = team_sql(
        "SELECT declared_by, kind, labels FROM metric_families"
        " WHERE family IN ('webhook_failures_total', 'database_up') ORDER BY family"
    )
    assert rows == [["", "gauge", []], ["", "counter", ["source"]]]

    _container(app_env, team_url, "OldLayerFunction")
    del families.REGISTRY["webhook_failures_total"]
    assert families.RESERVED is not None  # reserved by the first read, above
    monkeypatch.setattr(families, "RESERVED", families.RESERVED - {"webhook_failures_total"})
    mine = families.Counter("webhook_failures_total", "Mine.", ("kind",))
    other = families.Counter("t20_refunds_total", "Refunds.")
    mine.labels(kind="x").inc()
    other.inc()
    assert flush()
    (refused,) = [line for line in log_lines() if line.get("status") == "refused"]
    (reason,) = refused["families"]
    assert reason.startswith(
        "webhook_failures_total: declared by the catalogue (reserved) as counter{source}"
    )
    team_registry()
    _container(app_env, team_url, "MetricsFunction")
    samples = scrape_samples()
    assert value(samples, "t20_refunds_total") == 1
    assert not [k for k in samples if k[0] == "webhook_failures_total" and k[1]]


# -- the README's team function, served by the local gateway --------------------------------


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status)


@pytest.mark.slow
def test_the_readme_s_team_function_is_exposed_and_mirrored(
    team_url: str, team_sql: SQL, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The README's example as written: its function and its template entry, in a copy of
    template.yaml, behind the local gateway; the metrics function is the real one."""
    code = tmp_path / "orders"  # the package `orders`; tmp_path is its CodeUri (/var/task)
    code.mkdir()
    (code / "__init__.py").touch()
    (code / "app.py").write_text(code_block(README, "python", "from ops.metrics import Counter"))
    entry = code_block(README, "yaml", "OrdersFunction:")
    assert "CodeUri: functions/\n" in entry and "Handler: orders.app.lambda_handler" in entry
    template = (ROOT / "template.yaml").read_text()
    assert template.count("\nResources:\n") == 1
    entry = entry.replace("CodeUri: functions/", f"CodeUri: {tmp_path}/")
    template = template.replace("\nResources:\n", "\nResources:\n" + entry)
    (tmp_path / "template.yaml").write_text(template)

    with local_gateway({"DATABASE_URL": team_url}, template=tmp_path / "template.yaml") as url:
        for body in (b"a", b"b", b"c", b"", b""):
            assert _post(f"{url}/orders", body) == 200
        status, data = get(f"{url}/metrics")
    assert status == 200
    text = data.decode()
    assert "# HELP orders_total Orders placed, by outcome.\n# TYPE orders_total counter\n" in text
    assert (
        "# HELP orders_checkout_duration_seconds Time to check an order out, in seconds.\n"
        "# TYPE orders_checkout_duration_seconds histogram\n"
    ) in text
    samples = parse(text)
    assert value(samples, "orders_total", outcome="accepted") == 3
    assert value(samples, "orders_total", outcome="rejected") == 2
    bounds = [
        dict(k[1])["le"] for k in samples if k[0] == "orders_checkout_duration_seconds_bucket"
    ]
    assert bounds == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf"]
    assert value(samples, "orders_checkout_duration_seconds_bucket", le="+Inf") == 5
    assert value(samples, "orders_checkout_duration_seconds_count") == 5

    lines = emf_lines(capfd.readouterr().err)  # the workers' stdout goes to the gateway's stderr
    orders = [line for line in lines if "orders" in line]
    assert sum(sum(line["orders"]) for line in orders) == 5
    took = [v for line in lines for v in line.get("orders_checkout_duration_seconds", [])]
    assert len(took) == 5 and all(0 <= v < 5 for v in took)
    units = {
        m["Name"]: m["Unit"]
        for line in lines
        for directive in line["_aws"]["CloudWatchMetrics"]
        for m in directive["Metrics"]
    }
    assert units["orders"] == "Count" and units["orders_checkout_duration_seconds"] == "Seconds"
