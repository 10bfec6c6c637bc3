"""The health function as AWS runs it: under the real runtime client (awslambdaric, both
ways it polls) against a loopback Runtime API + Extensions API (tools.runtime.ric), with
Lambda's shutdown sequence (SIGTERM, SIGKILL at +500 ms) and a freeze.

* Served == stored, exactly, after SIGTERM, whichever thread the client polls on.
* Init ends when the extension registration fails or is never answered.
* A slow database near the deadline: no 503 for our own flush, an answer in time.
* An idle connection that silently died: the shutdown flush uses a fresh one.

Where this and the worker-loop tests (test_metrics_shutdown.py) disagree, this one is
the user's ground.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Protocol
from urllib.parse import urlsplit

import pytest

from tests.support.db import SQL, PgConnect
from tests.support.metrics import (
    emptied_store,
    metrics_database,
    stored_probe_requests,
)
from tools.localdb.pgcluster import PgCluster
from tools.runtime.apigw import proxy_event
from tools.runtime.ric import POLLING, RicFunction
from tools.standins.tcp_proxy import DelayProxy


@pytest.fixture(scope="module")
def ric_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_ric")


@pytest.fixture
def own_sql(ric_url: str, pg_connect: PgConnect) -> SQL:
    return emptied_store(pg_connect(ric_url))


class StartFunction(Protocol):
    """The `start` fixture: the health function under the runtime interface client, ended
    when the test ends."""

    def __call__(
        self,
        env: dict[str, str],
        execution_env: str | None = POLLING["thread"],
        *,
        register_status: int | None = 200,
    ) -> RicFunction: ...


@pytest.fixture
def start() -> Iterator[StartFunction]:
    started: list[RicFunction] = []

    def run(
        env: dict[str, str],
        execution_env: str | None = POLLING["thread"],
        *,
        register_status: int | None = 200,
    ) -> RicFunction:
        env = {"POWERTOOLS_METRICS_NAMESPACE": "Test", **env}
        started.append(
            RicFunction(
                "HealthFunction", env, execution_env=execution_env, register_status=register_status
            )
        )
        return started[-1]

    yield run
    for fn in started:
        fn.close()


@pytest.mark.parametrize("polling", POLLING)
def test_every_request_served_is_stored_after_sigterm(
    ric_url: str, own_sql: SQL, start: StartFunction, polling: str
) -> None:
    fn = start({"DATABASE_URL": ric_url, "METRICS_FLUSH_INTERVAL_S": "600"}, POLLING[polling])
    fn.wait_init()
    served = 0
    for i in range(250):  # 200 liveness, 50 checks (a check carries what is due)
        status, _ = fn.get("/health" if i % 5 == 0 else "/health/live")
        assert status == 200
        served += 1
        if i == 125:  # frozen between invocations, as Lambda does
            fn.freeze()
            time.sleep(0.3)
            fn.thaw()
    assert stored_probe_requests(own_sql) < served  # the rest waits for the shutdown flush
    ending = fn.shutdown()
    assert not ending.killed, ending
    assert stored_probe_requests(own_sql) == served
    # Thread polling: the main thread runs the Python handler and dies of SIGTERM as it
    # would have. Main-thread polling: the watcher flushed, and ended the process (0)
    # unless the client's C code returned to Python meanwhile (it sometimes does).
    assert ending.returncode in ((-15,) if polling == "thread" else (0, -15)), ending
    ((headers, body),) = fn.api.registrations
    assert headers["Lambda-Extension-Name"] == "ops-metrics-shutdown-flush"
    assert body == {"events": []}
    assert len(fn.api.next_calls) == 1
    assert not fn.api.init_errors


@pytest.mark.parametrize("register_status", [500, None], ids=["answered_500", "never_answered"])
def test_init_ends_when_the_extension_cannot_register(
    ric_url: str, start: StartFunction, register_status: int | None
) -> None:
    fn = start({"DATABASE_URL": ric_url}, register_status=register_status)
    assert fn.wait_init(timeout_s=30) < 5.0  # generous: the registration waits 0.5 s at most
    assert fn.get("/health/live")[0] == 200
    assert not fn.api.init_errors
    warnings = [line for line in fn.json_lines() if "extension" in str(line.get("message"))]
    assert warnings and "no flush on SIGTERM" in str(warnings[0]["message"]), warnings


def _proxied(url: str, delay_s: float) -> DelayProxy:
    where = urlsplit(url)
    assert where.hostname and where.port
    return DelayProxy((where.hostname, where.port), delay_s)


def test_a_slow_database_near_the_deadline_is_not_reported_down(
    ric_url: str, start: StartFunction
) -> None:
    """Pending counts are handed to the flush at once (less than 2 x the flush timeout
    left); the check must not queue behind that flush, and must answer in time."""
    proxy = _proxied(ric_url, 0.1)  # 200 ms a round trip
    try:
        fn = start({"DATABASE_URL": proxy.url(ric_url), "METRICS_FLUSH_INTERVAL_S": "1"})
        fn.wait_init()
        # Both connections opened (~4 round trips each): the check's, then the store's
        # by the flush after the call; a flush after a quiet spell.
        assert fn.get("/health")[0] == 200
        time.sleep(1.5)
        for _ in range(20):
            assert fn.get("/health/live")[0] == 200
        event = proxy_event(method="GET", path="/health", resource="/health")
        # 400 ms: one round trip fits, with time to spare; two (the check behind the
        # flush, as on one shared connection) do not.
        invocation = fn.api.submit(event, 0.4)
        assert invocation.answered.wait(10)
        assert invocation.outcome == "response"
        assert invocation.answered_wall_ms < invocation.deadline_ms, "answered after the deadline"
        assert invocation.body["statusCode"] == 200, [
            (line.get("message"), line.get("error"), line.get("latencyMs"))
            for line in fn.json_lines()
            if line.get("level") in ("WARNING", "ERROR")
        ]
    finally:
        proxy.close()


def test_a_database_slower_than_the_deadline_gets_an_answer_in_time(
    ric_url: str, start: StartFunction
) -> None:
    proxy = _proxied(ric_url, 0.4)  # 800 ms a round trip: no reply fits in 500 ms
    try:
        fn = start({"DATABASE_URL": proxy.url(ric_url)})
        fn.wait_init()
        event = proxy_event(method="GET", path="/health/ready", resource="/health/ready")
        invocation = fn.api.submit(event, 0.5)
        assert invocation.answered.wait(10)
        assert invocation.answered_wall_ms < invocation.deadline_ms, "answered after the deadline"
        assert invocation.body["statusCode"] == 503
        checks = json.loads(invocation.body["body"])["checks"]
        assert checks["database"]["reason"] == "timeout"
    finally:
        proxy.close()


@pytest.mark.parametrize("polling", ["thread", "main"])
def test_a_silently_dropped_idle_connection_is_replaced_at_shutdown(
    ric_url: str, own_sql: SQL, start: StartFunction, polling: str
) -> None:
    proxy = _proxied(ric_url, 0.0)
    try:
        fn = start(
            {"DATABASE_URL": proxy.url(ric_url), "METRICS_FLUSH_INTERVAL_S": "600"},
            POLLING[polling],
        )
        fn.wait_init()
        served = 0
        for i in range(60):  # the first call's flush (after a quiet spell) opens the store's
            assert fn.get("/health" if i % 3 == 1 else "/health/live")[0] == 200
            served += 1
        time.sleep(0.2)  # that flush has settled on the kept connection
        stored_before = stored_probe_requests(own_sql)
        assert 0 < stored_before < served  # the store's connection was used, and is kept
        proxy.vanish()  # its packets vanish from now on; a new connection works
        ending = fn.shutdown()
        assert not ending.killed, ending
        flushes = [line for line in fn.json_lines() if line.get("type") == "metrics_flush"]
        assert stored_probe_requests(own_sql) == served, (ending, flushes)
    finally:
        proxy.close()
