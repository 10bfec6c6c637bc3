"""Every function's database path through PgBouncer in transaction mode, stock settings:
the local stand-in for RDS Proxy, where a client holds a server connection only for the
length of a transaction.

While the tests run, the pool's two server connections are crowded: two other clients
share them, each leaving hostile session state behind on the connection it used
(`DISCARD ALL`, which also drops every prepared statement, and `SET statement_timeout = 0`,
session-wide), and the admin console asks for every server connection to be replaced
once its transaction ends (`RECONNECT`, in a loop). So the code's consecutive
transactions rarely share a server session, and when they do it is one a neighbour has
reset: anything session-scoped it relied on (a startup parameter, a SET, a prepared
statement kept across transactions) is missing. `test_session_state_does_not_survive_the_pooler`
and `test_the_crowd_breaks_a_flush_that_relies_on_a_session_timeout` show that it would be.
No pooler setting beyond `pool_mode = transaction` is needed (docs/metrics-database.md).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pg8000.native
import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from tests.support.binaries import require_binary
from tests.support.db import SQL, runner
from tests.support.metrics import METRIC_TABLES, metrics_database, scrape_samples, value
from tests.support.retention import audit_entries, clean_slate, count, policies, run, seed
from tests.support.runtime import call_api, function_handler
from tools.localdb import pgbouncer
from tools.localdb.pgbouncer import PgBouncer
from tools.localdb.pgcluster import SUPERUSER, PgCluster


@contextmanager
def _pooled(cluster: PgCluster, name: str) -> Iterator[PgBouncer]:
    """A migrated database of its own behind a transaction pooler of two server connections."""
    require_binary("pgbouncer")
    metrics_database(cluster, name)
    proxy = PgBouncer(cluster, name, pool_size=2)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    with _pooled(pg_cluster, "pooled") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def store_bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    """A separate metrics database (METRICS_DATABASE_URL) behind a pooler of its own."""
    with _pooled(pg_cluster, "pooled_store") as proxy:
        yield proxy


# What a careless neighbour leaves on the server connection it used, one per transaction.
HOSTILE = ("DISCARD ALL", "SET statement_timeout = 0", "SELECT pg_sleep(0.001)")
# Well above what a server connection takes to log in: a RECONNECT landing during a login
# marks the new connection too, and a client's login waits for a server connection, so a
# tight loop starves the pool (and the neighbours reset state far more often anyway).
CHURN_EVERY_S = 0.25


@contextmanager
def crowded(*bouncers: PgBouncer) -> Iterator[None]:
    """On each pooler: two neighbours leaving hostile session state behind, and every
    server connection replaced after its transaction (RECONNECT, in a loop)."""
    stop = threading.Event()

    def neighbour(bouncer: PgBouncer) -> None:
        conn = _raw(bouncer)
        try:
            for statement in itertools.cycle(HOSTILE):
                if stop.wait(0.001):  # a breath between transactions: the pool is shared
                    break
                try:
                    conn.run(statement)
                except (OSError, InterfaceError):
                    # A loaded machine can time a neighbour out waiting for a server
                    # connection: it comes back, so the crowd never quietly thins.
                    with suppress(OSError, InterfaceError):
                        conn.close()
                    conn = _raw(bouncer)
        finally:
            with suppress(OSError, InterfaceError):
                conn.close()

    def churn(bouncer: PgBouncer) -> None:
        admin = bouncer.admin_connection()
        try:
            while not stop.wait(CHURN_EVERY_S):
                bouncer.reconnect(admin)
        finally:
            admin.close()

    jobs: list[Callable[[PgBouncer], None]] = [neighbour, neighbour, churn]
    threads = [
        threading.Thread(target=job, args=(b,), daemon=True) for b in bouncers for job in jobs
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)


@pytest.fixture
def neighbours(bouncer: PgBouncer) -> Iterator[None]:
    with crowded(bouncer):
        yield


@pytest.fixture
def pooled_env(bouncer: PgBouncer, app_env: Callable[..., None], neighbours: None) -> str:
    app_env(DATABASE_URL=bouncer.url, METRICS_FLUSH_INTERVAL_S="0", DB_STATEMENT_TIMEOUT_MS="4321")
    return bouncer.url


def _flush() -> bool:
    from ops.metrics import flush

    return flush()


def _raw(bouncer: PgBouncer, timeout: float = 10) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        SUPERUSER,
        password=bouncer.cluster.password,
        host="127.0.0.1",
        port=bouncer.port,
        database=pgbouncer.DATABASE,
        timeout=timeout,
    )


def test_session_state_does_not_survive_the_pooler(bouncer: PgBouncer) -> None:
    """The control: through this pooler, session state does not outlive its transaction
    once another server connection serves the next one (here: after RECONNECT)."""
    conn = _raw(bouncer)
    try:
        conn.run("SET statement_timeout = 4321")
        statement = conn.prepare("SELECT 1")
        bouncer.reconnect()
        assert conn.run("SHOW statement_timeout")[0][0] != "4321ms"
        with pytest.raises(DatabaseError, match="does not exist"):
            statement.run()
    finally:
        conn.close()


def test_health_flush_and_scrape_through_the_pooler_count_exactly(pooled_env: str) -> None:
    health = function_handler("health")
    for _ in range(40):
        status, _, body = call_api(health, "/health")
        assert status == 200, body
        status, _, _ = call_api(health, "/health/live")
        assert status == 200
    status, _, body = call_api(health, "/health/ready")
    assert status == 200, body
    # What a crowded pool delayed (a flush that timed out connecting, resent) is all stored
    # once a waited flush succeeds: exactly once each.
    assert _flush()

    samples = scrape_samples()  # the scrape: its checks, the store read, the live gauges
    assert value(samples, "database_up") == 1.0
    for route, calls in (("/health", 40), ("/health/live", 40), ("/health/ready", 1)):
        counted = value(samples, "http_requests_total", method="GET", route=route, status="200")
        assert counted == calls, (route, counted)


def test_a_connection_never_carries_a_startup_parameter_a_pooler_refuses(
    pooled_env: str, bouncer: PgBouncer
) -> None:
    """PgBouncer refuses unknown startup parameters (`statement_timeout` was one): the
    container's statements still run with their server-side timeout, per transaction."""
    from ops.db import get_db

    db = get_db()
    assert db.statement_timeout_ms == 4321
    ((timeout,),) = db.run("SELECT current_setting('statement_timeout')")
    assert timeout == "4321ms"
    ((timeout,),) = db.run("SELECT current_setting('statement_timeout') WHERE 1 = :one", one=1)
    assert timeout == "4321ms"
    assert "unsupported startup parameter" not in bouncer.log()


@pytest.fixture
def pooled_sql(
    bouncer: PgBouncer, pg_cluster: PgCluster, pg_connect: Callable[..., pg8000.native.Connection]
) -> SQL:
    """The pooled database, straight (not through the pooler): the test's own view."""
    return runner(pg_connect(pg_cluster.url("pooled")))


def test_retention_through_the_pooler_prunes_and_audits_exactly(
    pooled_env: str, pooled_sql: SQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_slate(pooled_sql, monkeypatch)
    # Enough rows for several batches of each form, windows included.
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        policies(
            ("inbound_events", "received_at", 30, 1000), ("chat_sessions", "updated_at", 90, 1000)
        ),
    )
    seed(pooled_sql, events_expired=5000, events_fresh=30, sessions_expired=1500, sessions_fresh=20)
    dry = run({"dryRun": True, "runId": "pooled-dry"})
    assert {t["table"]: t["wouldDelete"] for t in dry["tables"]} == {
        "inbound_events": 5000,
        "chat_sessions": 1500,
    }
    result = run({"runId": "pooled-run"})
    assert result["status"] == "completed", result
    assert count(pooled_sql, "inbound_events") == 30
    assert count(pooled_sql, "chat_sessions") == 20
    audited = {e["entity"]: e["deleted"] for e in audit_entries(pooled_sql, result["runId"])}
    assert audited == {"inbound_events": 5000, "chat_sessions": 1500}


@pytest.fixture
def apart_env(
    bouncer: PgBouncer,
    store_bouncer: PgBouncer,
    app_env: Callable[..., None],
    pg_connect: Callable[..., pg8000.native.Connection],
) -> Iterator[str]:
    """Both databases behind their poolers, crowded: the application's and the store's."""
    pg_connect(store_bouncer.cluster.url("pooled_store")).run(f"TRUNCATE {METRIC_TABLES}")
    app_env(
        DATABASE_URL=bouncer.url,
        METRICS_DATABASE_URL=store_bouncer.url,
        METRICS_FLUSH_INTERVAL_S="0",
        METRICS_FLUSH_TIMEOUT_MS="300",
    )
    with crowded(bouncer, store_bouncer):
        yield store_bouncer.cluster.url("pooled_store")


def test_every_path_with_the_store_apart_through_poolers_counts_exactly(
    apart_env: str, pooled_sql: SQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health checks, flushes, a retention run and a scrape, each database behind its own
    crowded pooler: every count exact."""
    health = function_handler("health")
    for _ in range(25):
        assert call_api(health, "/health")[0] == 200
    clean_slate(pooled_sql, monkeypatch)
    monkeypatch.setenv("RETENTION_POLICIES", policies(("inbound_events", "received_at", 30, 500)))
    seed(pooled_sql, events_expired=1200, events_fresh=10, sessions_expired=0, sessions_fresh=0)
    result = run({"runId": "pooled-apart"})
    assert result["status"] == "completed", result
    assert count(pooled_sql, "inbound_events") == 10
    samples = scrape_samples()
    assert value(samples, "database_up") == value(samples, "metrics_store_up") == 1.0
    assert value(samples, "http_requests_total", method="GET", route="/health", status="200") == 25
    assert value(samples, "retention_runs_total", status="succeeded") == 1
    assert value(samples, "retention_rows_deleted_total", table="inbound_events") == 1200


def test_a_flush_through_the_pooler_is_bounded_by_its_own_statement_timeout(
    apart_env: str,
    app_env: Callable[..., None],
    pg_connect: Callable[..., pg8000.native.Connection],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    """The store's tables locked: the flush is cancelled by the server at its own
    METRICS_FLUSH_TIMEOUT_MS (57014, nothing stored, kept), on a pooled connection whose
    session a neighbour left with `statement_timeout = 0`. Sent as a startup parameter or
    a session SET, that timeout would be gone, and the flush would wait for the lock."""
    from ops.metrics import catalogue as m
    from ops.metrics import current, flush

    app_env(DB_STATEMENT_TIMEOUT_MS="60000")  # only the flush's own timeout can end it
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc()
    assert flush()
    locker = pg_connect(apart_env)
    locker.run("BEGIN")
    locker.run("LOCK TABLE metric_values, metric_flush_cursors IN ACCESS EXCLUSIVE MODE")
    try:
        counter.inc(10)
        assert not flush()
        settled = current().outbox.wait_idle(5)
    finally:
        locker.run("ROLLBACK")
    assert settled, "the flush waited for the lock: its statement timeout was not in force"
    failures = [line for line in log_lines() if line.get("type") == "metrics_flush"]
    assert failures and failures[0]["outcome"] == "rejected" and "57014" in failures[0]["error"]
    counter.inc(100)
    assert flush()
    assert value(scrape_samples(), "webhook_failures_total", source="stripe") == 111


def test_the_crowd_breaks_a_flush_that_relies_on_a_session_timeout(
    bouncer: PgBouncer,
    neighbours: None,
    pg_connect: Callable[..., pg8000.native.Connection],
    pg_cluster: PgCluster,
) -> None:
    """The negative control of the test above: a timeout set for the session (as a startup
    parameter would be) is gone by the next transaction, so a blocked statement is not
    cancelled by the server; the client's own socket timeout ends it instead."""
    locker = pg_connect(pg_cluster.url("pooled"))
    locker.run("BEGIN")
    locker.run("LOCK TABLE metric_flush_cursors IN ACCESS EXCLUSIVE MODE")
    conn = _raw(bouncer, timeout=3)
    try:
        conn.run("SET statement_timeout = 200")
        time.sleep(0.05)  # the churn replaces that server connection meanwhile
        started = time.monotonic()
        with pytest.raises((InterfaceError, OSError)):  # the socket timeout, not a 57014
            conn.run("SELECT count(*) FROM metric_flush_cursors")
        assert time.monotonic() - started >= 2.5, "cancelled by a session timeout that survived"
    finally:
        locker.run("ROLLBACK")
        with suppress(Exception):
            conn.close()
