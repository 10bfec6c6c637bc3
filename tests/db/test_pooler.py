"""Every function's database path through PgBouncer in transaction mode, stock settings:
the local stand-in for RDS Proxy, where a client holds a server connection only for the
length of a transaction.

While the tests run, two other clients share the pool's two server connections, so the
code's consecutive transactions land on either: anything session-scoped it relied on (a
startup parameter, a SET, a prepared statement kept across transactions) is missing about
half the time. `test_session_state_does_not_survive_the_pooler` shows that it would be.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pg8000.native
import pytest
from pg8000.exceptions import DatabaseError

from tests.support.binaries import require_binary
from tests.support.db import SQL, runner
from tests.support.metrics import metrics_database, scrape_samples, value
from tests.support.retention import audit_entries, clean_slate, count, policies, run, seed
from tests.support.runtime import call_api, function_handler
from tools import pgbouncer
from tools.pgbouncer import PgBouncer
from tools.pgcluster import SUPERUSER, PgCluster


@pytest.fixture(scope="module")
def bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    require_binary("pgbouncer")
    metrics_database(pg_cluster, "pooled")
    proxy = PgBouncer(pg_cluster, "pooled", pool_size=2)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def neighbours(bouncer: PgBouncer) -> Iterator[None]:
    """Two other clients running short transactions all the while, on a pool of two
    server connections: consecutive transactions of the code under test land on either,
    so session state left on one is missing on the other about half the time."""
    stop = threading.Event()

    def busy() -> None:
        conn = _raw(bouncer)
        try:
            while not stop.is_set():
                conn.run("SELECT pg_sleep(0.001)")
        finally:
            conn.close()

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    yield
    stop.set()
    for thread in threads:
        thread.join(5)


@pytest.fixture
def pooled_env(bouncer: PgBouncer, app_env, neighbours) -> str:
    app_env(DATABASE_URL=bouncer.url, METRICS_FLUSH_INTERVAL_S="0", DB_STATEMENT_TIMEOUT_MS="4321")
    return bouncer.url


def _raw(bouncer: PgBouncer) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        SUPERUSER,
        password=bouncer.cluster.password,
        host="127.0.0.1",
        port=bouncer.port,
        database=pgbouncer.DATABASE,
        timeout=10,
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
def pooled_sql(bouncer: PgBouncer, pg_cluster: PgCluster, pg_connect) -> SQL:
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
