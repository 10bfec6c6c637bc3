"""A separate metrics database (METRICS_DATABASE_URL): two PostgreSQL clusters, either
stopped with `pg_ctl -m immediate` while the other runs.

The application's database down: health answers 503 as it does today, `database_up 0`,
and every count still reaches the store (exact). The metrics database down: health
answers 200 as if nothing happened, the scrape answers 200 with `metrics_store_up 0` and
the live gauges, the counts stay pending in the container and are all stored (exact)
once the store is back. docs/metrics-database.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.db import PgConnect
from tests.support.metrics import metrics_database, scrape_samples, value
from tests.support.runtime import AppEnv, LogLines, call_api, function_handler
from tools.localdb.pgcluster import PgCluster, running_cluster

pytestmark = pytest.mark.db  # clusters of its own (not the session fixture)


@pytest.fixture(scope="module")
def app_cluster() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def store_cluster() -> Iterator[PgCluster]:
    # Durable: what a flush was told is stored must survive `pg_ctl -m immediate`.
    with running_cluster(durable=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def urls(app_cluster: PgCluster, store_cluster: PgCluster) -> tuple[str, str]:
    return metrics_database(app_cluster, "app"), metrics_database(store_cluster, "store")


@pytest.fixture
def apart(
    urls: tuple[str, str], app_env: AppEnv, pg_connect: PgConnect
) -> Iterator[tuple[str, str]]:
    """Handlers on the application's database with the store on its own; both empty."""
    app_url, store_url = urls
    for url in urls:
        pg_connect(url).run(
            "TRUNCATE metric_values, metric_series, metric_flush_cursors, metric_families"
        )
    app_env(DATABASE_URL=app_url, METRICS_DATABASE_URL=store_url)
    yield urls


def _down(cluster: PgCluster) -> None:
    cluster.stop("immediate")


def _up(cluster: PgCluster) -> None:
    if not cluster.running:
        cluster.start()
        cluster.wait_ready()


def _flush() -> bool:
    from ops.metrics import flush

    return flush()


def _requests(samples: dict[Any, float], route: str, status: str) -> float:
    return value(samples, "http_requests_total", method="GET", route=route, status=status)


def _stored(url: str, family: str) -> float:
    """A family's stored total in one database, read straight from it."""
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=10)
    try:
        ((total,),) = conn.run(
            "SELECT coalesce(sum(v.value), 0) FROM metric_values v"
            " JOIN metric_series s ON s.id = v.series_id WHERE s.family = :f",
            f=family,
        )
    finally:
        conn.close()
    return float(total)


def test_application_database_down_every_count_still_stored(
    apart: tuple[str, str], app_cluster: PgCluster
) -> None:
    app_url, store_url = apart
    health = function_handler("health")
    for _ in range(5):
        assert call_api(health, "/health")[0] == 200
    _down(app_cluster)
    try:
        for _ in range(7):
            status, _, body = call_api(health, "/health")
            assert (status, body) == (503, {"status": "error", "db": "disconnected"})
        assert call_api(health, "/health/live")[0] == 200
        status, _, body = call_api(health, "/health/ready")
        assert status == 503 and body["checks"]["database"]["status"] == "down"
        assert _flush(), "the store is up: the flush must be stored"

        samples = scrape_samples()
        assert value(samples, "database_up") == 0.0
        assert value(samples, "metrics_store_up") == 1.0
        assert value(samples, "health_check_status", check="database") == 0.0
        assert _requests(samples, "/health", "200") == 5
        assert _requests(samples, "/health", "503") == 7
        assert _requests(samples, "/health/live", "200") == 1
        assert _requests(samples, "/health/ready", "503") == 1
        # Every failed check is counted: seven /health, one /health/ready.
        assert value(samples, "health_check_failures_total", check="database") == 8
        assert not any(name == "db_connections" for name, _ in samples), "live: app database"
    finally:
        _up(app_cluster)
    # The counts went to the store (the scrape's own with them), none to the application's.
    assert _flush()
    assert _stored(store_url, "http_requests_total") == 15
    assert _stored(app_url, "http_requests_total") == 0


def test_metrics_database_down_health_unaffected_and_counts_delivered_after(
    apart: tuple[str, str], store_cluster: PgCluster, log_lines: LogLines
) -> None:
    health = function_handler("health")
    for _ in range(4):
        assert call_api(health, "/health")[0] == 200
    assert _flush()
    _down(store_cluster)
    try:
        for _ in range(6):
            status, _, body = call_api(health, "/health")
            assert (status, body) == (200, {"status": "ok", "db": "connected"})
        status, _, body = call_api(health, "/health/ready")
        assert status == 200 and set(body["checks"]) == {"database"}
        assert not _flush(), "the store is down: nothing can be stored"

        samples = scrape_samples()  # 200: the live gauges, the checks, no stored sample
        assert value(samples, "database_up") == 1.0
        assert value(samples, "metrics_store_up") == 0.0
        assert value(samples, "health_check_status", check="database") == 1.0
        assert not any(name == "http_requests_total" for name, _ in samples)
        assert any(name == "db_connections" for name, _ in samples), "live gauges still read"
        failed = [
            line
            for line in log_lines()
            if line.get("type") == "health_check" and line.get("check") == "metrics_store"
        ]
        assert failed and failed[-1]["reason"] == "refused", failed
    finally:
        _up(store_cluster)
    assert _flush(), "the store is back: what was kept is stored"

    samples = scrape_samples()
    assert value(samples, "metrics_store_up") == 1.0
    assert _requests(samples, "/health", "200") == 10  # four before the stop, six during
    assert _requests(samples, "/health/ready", "200") == 1
    assert _requests(samples, "/metrics", "200") == 1  # the scrape during the outage
    assert value(samples, "metrics_flush_failures_total", function="local") >= 1
    assert value(samples, "health_check_failures_total", check="metrics_store") == 1


def test_a_metrics_database_without_the_migrations_is_metrics_store_up_0_not_a_503(
    urls: tuple[str, str], store_cluster: PgCluster, app_env: AppEnv, log_lines: LogLines
) -> None:
    """The store answering with an error costs the stored samples, not the application's
    gauges: 200 with `metrics_store_up 0` (without a separate store this is a 503)."""
    bare = store_cluster.create_database("bare")
    app_env(DATABASE_URL=urls[0], METRICS_DATABASE_URL=bare)
    samples = scrape_samples()
    assert value(samples, "database_up") == 1.0
    assert value(samples, "metrics_store_up") == 0.0
    assert any(name == "db_connections" for name, _ in samples)
    (failed,) = [line for line in log_lines() if line.get("check") == "metrics_store"]
    assert failed["reason"] == "error" and "metric_" in failed["error"]


def test_without_a_separate_store_metrics_store_up_is_database_up(
    urls: tuple[str, str], app_env: AppEnv, closed_port: int
) -> None:
    app_env(DATABASE_URL=urls[0])
    samples = scrape_samples()
    assert value(samples, "database_up") == value(samples, "metrics_store_up") == 1.0
    app_env(DATABASE_URL=f"postgresql://u:p@127.0.0.1:{closed_port}/db")
    samples = scrape_samples()
    assert value(samples, "database_up") == value(samples, "metrics_store_up") == 0.0


def test_make_migrate_brings_both_databases_up(
    app_cluster: PgCluster,
    store_cluster: PgCluster,
    app_env: AppEnv,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ops.db import parse_database_url
    from tools.cli import run
    from tools.localdb.migrate import main, migration_files

    app_url = app_cluster.create_database("migrate_app")
    store_url = store_cluster.create_database("migrate_store")
    app_env(DATABASE_URL=app_url, METRICS_DATABASE_URL=store_url)
    assert run("migrate", main) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"migrations on {parse_database_url(app_url).target}: applied")
    store_target = parse_database_url(store_url).target
    assert out[1].startswith(f"migrations on {store_target} (metrics database): applied")
    files = [p.name for p in migration_files()]
    for url in (app_url, store_url):
        from ops.db import connect_url

        conn = connect_url(url, timeout_s=10)
        try:
            assert [v for (v,) in conn.run("SELECT version FROM schema_migrations")] == files
        finally:
            conn.close()
    assert run("migrate", main) == 0  # again: both up to date
    assert capsys.readouterr().out.count("up to date") == 2


def test_a_malformed_metrics_database_url_is_named_and_never_quoted(
    urls: tuple[str, str], app_env: AppEnv, log_lines: LogLines
) -> None:
    app_env(DATABASE_URL=urls[0], METRICS_DATABASE_URL="mysql://u:hunter2@h/db")
    health = function_handler("health")
    assert call_api(health, "/health")[0] == 200  # the application's database is fine
    assert not _flush()
    samples = scrape_samples()
    assert value(samples, "metrics_store_up") == 0.0
    text = json.dumps(log_lines())
    assert "METRICS_DATABASE_URL must start with postgresql://" in text
    assert "hunter2" not in text


def test_the_metrics_database_secret_and_host_override(
    urls: tuple[str, str], store_cluster: PgCluster, app_env: AppEnv, secrets_client: Any
) -> None:
    """METRICS_DB_SECRET_ARN in DB_SECRET_ARN's format; METRICS_DB_HOST wins over its host
    (an RDS Proxy endpoint), and DB_HOST does not touch it."""
    from ops.db import parse_database_url

    store = parse_database_url(urls[1])
    secret = {
        "username": store.user,
        "password": store.password,
        "host": "store.invalid",  # replaced by METRICS_DB_HOST
        "port": store.port,
        "dbname": store.database,
    }
    arn = secrets_client.create_secret(Name="rds-metrics", SecretString=json.dumps(secret))["ARN"]
    app_env(
        DATABASE_URL=urls[0],
        METRICS_DB_SECRET_ARN=arn,
        METRICS_DB_HOST="127.0.0.1",
        DB_HOST="app.invalid",  # the application's override: a URL wins over it anyway
        DB_SSL_MODE="disable",
    )
    before = _stored(urls[1], "http_requests_total")
    assert call_api(function_handler("health"), "/health")[0] == 200
    assert _flush()
    assert _stored(urls[1], "http_requests_total") == before + 1


def test_a_hung_metrics_database_delays_neither_probes_nor_the_scrape(
    urls: tuple[str, str], app_env: AppEnv, blackhole: int
) -> None:
    """A store that accepts and never answers: health answers at once (the flush is handed
    to the flush thread), the scrape within its budget with `metrics_store_up 0` and the
    application's database measured."""
    import time

    app_env(
        DATABASE_URL=urls[0],
        METRICS_DATABASE_URL=f"postgresql://u:p@127.0.0.1:{blackhole}/db",
        METRICS_SCRAPE_BUDGET_S="2",
        HEALTH_DB_TIMEOUT_S="1",
        METRICS_FLUSH_TIMEOUT_MS="2000",  # a waited flush would wait out the 2 s connect
    )
    health = function_handler("health")
    for _ in range(3):
        started = time.monotonic()
        assert call_api(health, "/health")[0] == 200
        assert time.monotonic() - started < 1.5  # generous; waiting for the flush takes 2 s
    started = time.monotonic()
    samples = scrape_samples()
    assert time.monotonic() - started < 5  # within the budget (2 s), generously
    assert value(samples, "database_up") == 1.0
    assert value(samples, "metrics_store_up") == 0.0
    assert value(samples, "health_check_status", check="database") == 1.0
