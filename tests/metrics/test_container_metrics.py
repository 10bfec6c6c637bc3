"""One object owns a container's metrics state (ops.metrics.container): several container
identities in one process, each with its own pending deltas, outbox, flush clock and
connection; recordings follow the active instance onto the check workers; the one flush
entry point with its reasons; the health check carries the flush through a hook."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from ops.api import Request, Response, json_response
from ops.checks import Check, run_checks
from ops.db import Database
from ops.metrics import ContainerMetrics, FlushReason, current, flush, using
from ops.metrics import catalogue as m
from ops.metrics.pending import SeriesKey
from ops.wiring import service_api
from tests.support.db import SQL, PgConnect
from tests.support.metrics import (
    emptied_store,
    metrics_database,
    scrape_samples,
    value,
)
from tests.support.runtime import AppEnv, call_api
from tools import PYTHONPATH, ROOT
from tools.localdb.pgcluster import PgCluster


@pytest.fixture(scope="module")
def container_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_container")


@pytest.fixture
def own_sql(container_url: str, pg_connect: PgConnect) -> SQL:
    return emptied_store(pg_connect(container_url, timeout_s=30))


@pytest.fixture
def metrics_env(container_url: str, own_sql: SQL, app_env: AppEnv) -> str:
    app_env(DATABASE_URL=container_url, METRICS_NEW_SERIES_HOLD_S="0")
    return container_url


def _identity(name: str, connections: list[Database]) -> ContainerMetrics:
    def connect() -> Database:
        db = Database(application_name=name)
        connections.append(db)
        return db

    return ContainerMetrics(connect=connect)


def _webhook_failures(source: str) -> float:
    return value(scrape_samples(), "webhook_failures_total", source=source)


def test_recordings_go_to_the_active_instance_only() -> None:
    other = ContainerMetrics()
    counter = m.WEBHOOK_FAILURES.labels(source="github")
    counter.inc()
    with using(other) as active:
        assert current() is active is other
        counter.inc(5)
    assert current() is not other
    key = ("webhook_failures_total", 'source="github"', "")
    assert other.pending.take_deltas().sums == {key: 5.0}
    assert current().pending.take_deltas().sums == {key: 1.0}


def test_identities_flush_as_separate_containers_on_their_own_connections(
    metrics_env: str, own_sql: SQL
) -> None:
    connections: list[Database] = []
    fleet = [_identity(f"fleet-{i}", connections) for i in range(3)]
    counter = m.WEBHOOK_FAILURES.labels(source="fleet")
    for i, identity in enumerate(fleet):
        with using(identity):
            counter.inc(i + 1)
    for identity in fleet:
        assert identity.flush(FlushReason.NOW) is True
    assert len({identity.outbox.container for identity in fleet}) == 3
    assert len(connections) == 3  # one each, opened once, kept
    names = own_sql(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'fleet-%'"
        " ORDER BY 1"
    )
    assert [n for (n,) in names] == ["fleet-0", "fleet-1", "fleet-2"]
    ((cursors,),) = own_sql("SELECT count(*) FROM metric_flush_cursors")
    assert cursors == 3  # three container identities, as three Lambda containers would be
    assert _webhook_failures("fleet") == 6
    assert current().outbox_if_any() is None  # the default instance sent nothing
    for db in connections:
        db.close()


def test_identities_on_threads_record_and_flush_independently(metrics_env: str) -> None:
    fleet = [ContainerMetrics() for _ in range(4)]
    counter = m.WEBHOOK_FAILURES.labels(source="threads")
    stored: list[bool] = []

    def serve(identity: ContainerMetrics) -> None:
        with using(identity):
            for _ in range(50):
                counter.inc()
        stored.append(identity.flush(FlushReason.NOW))

    threads = [threading.Thread(target=serve, args=(identity,)) for identity in fleet]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert stored == [True] * 4
    assert _webhook_failures("threads") == 200


def test_the_flush_clock_is_the_instances(metrics_env: str, app_env: AppEnv, own_sql: SQL) -> None:
    """DUE follows the instance's clock: no sleeping, no wall time in the decision."""
    app_env(METRICS_FLUSH_INTERVAL_S="60")
    now = [1000.0]
    identity = ContainerMetrics(clock=lambda: now[0])
    counter = m.WEBHOOK_FAILURES.labels(source="clock")
    with using(identity):
        counter.inc()
        assert identity.flush(FlushReason.DUE) is True  # a first invocation after a quiet spell
        now[0] += 1
        counter.inc()
        assert identity.flush(FlushReason.DUE) is False  # one second later: kept
        assert identity.pending_since() == 1001.0
        now[0] += 30
        counter.inc()
        assert identity.flush(FlushReason.DUE) is False  # the oldest is 30 s old: kept
        now[0] += 30
        assert identity.flush(FlushReason.DUE) is True  # 60 s: due
    assert identity.pending_since() is None
    assert _webhook_failures("clock") == 3


def test_a_check_worker_records_into_the_callers_instance() -> None:
    """The checks' workers run in a copy of the caller's context."""
    identity = ContainerMetrics()
    counter = m.WEBHOOK_FAILURES.labels(source="worker")

    def probe(_: float) -> None:
        counter.inc()

    with using(identity):
        (result,) = run_checks([Check("recorder", probe, 5.0, True, "component")])
    assert result.ok
    worker = SeriesKey("webhook_failures_total", 'source="worker"', "")
    assert identity.pending.take_deltas().sums[worker] == 1.0
    assert not current().pending.take_deltas().sums.get(worker)


def test_an_api_function_flushes_the_active_instance(metrics_env: str) -> None:
    """The router's hooks (ops.wiring) record and flush into `current()`."""
    app = service_api()

    @app.get("/work")
    def work(req: Request) -> Response:
        m.TOOL_CALLS.labels(tool="work", status="ok").inc()
        return json_response(200, {})

    identity = ContainerMetrics()
    with using(identity):
        assert call_api(app.lambda_handler, "/work")[0] == 200
    assert identity.outbox_if_any() is not None  # the end-of-invocation flush was its own
    assert current().outbox_if_any() is None
    assert value(scrape_samples(), "tool_calls_total", tool="work", status="ok") == 1


def test_reset_replaces_the_default_instance() -> None:
    from ops.metrics import reset

    before = current()
    m.WEBHOOK_FAILURES.labels(source="reset").inc()
    reset()
    assert current() is not before and before.retired
    assert not current().pending.take_deltas()


def test_flush_without_a_database_takes_the_deltas(app_env: AppEnv) -> None:
    app_env(DATABASE_URL="")
    m.WEBHOOK_FAILURES.labels(source="nodb").inc()
    assert flush() is True  # the Prometheus side is off: nothing to keep
    assert current().pending_since() is None


def test_checks_import_nothing_of_the_metrics_package() -> None:
    code = (
        "import sys\n"
        "import ops.checks\n"
        "loaded = sorted(n for n in sys.modules if n.startswith('ops.metrics'))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}  # the layer and the functions
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
