"""Containers that end, and databases that hang, with real processes: each "container"
is a local gateway worker (tools.runtime.worker), fed invocations on stdin as the gateway does.

* Probe-only containers that exit normally, on SIGTERM, and on SIGTERM after
  registering with a Lambda Runtime API stand-in: stored totals equal requests served;
  their EMF (aggregated per interval) and sampled request lines account for every one.
* A database that accepts and never answers: every health route within its budget,
  /health/live fast on every call, including those where a deferred flush falls due.
* The database down: EMF lines for every invocation, with the health-check failure.

The same functions under the real Lambda runtime client: test_runtime_client.py (where
the two disagree, that one is the user's ground).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.db import SQL, PgConnect
from tests.support.metrics import (
    emptied_store,
    metrics_database,
    stored_probe_requests,
)
from tools import PYTHONPATH, ROOT
from tools.localdb.pgcluster import PgCluster
from tools.runtime.apigw import proxy_event
from tools.runtime.runtime_api import RuntimeApiStandIn
from tools.runtime.template import functions
from tools.runtime.worker import spawn

PROBES = ("/health/live", "/health", "/health/ready")
SERVE_S = 5.0


class Container:
    """One worker process serving the health function, one invocation at a time."""

    def __init__(self, env: dict[str, str], function: str = "HealthFunction") -> None:
        spec = functions()[function]
        self.timeout_s = spec.timeout_s
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = spawn(
            spec,
            {
                "AWS_LAMBDA_FUNCTION_NAME": function,
                "POWERTOOLS_METRICS_NAMESPACE": "Test",
                **env,
            },
            stderr=self.log,
        )
        self._read = 0

    def invoke(self, path: str) -> tuple[int, float]:
        """(status, seconds from sending the event to reading the reply)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        event = proxy_event(method="GET", path=path, resource=path)
        started = time.perf_counter()
        self.proc.stdin.write(json.dumps({"event": event, "timeout_s": self.timeout_s}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        elapsed = time.perf_counter() - started
        reply = json.loads(line)
        assert reply["ok"], reply
        return int(reply["result"]["statusCode"]), elapsed

    def new_output(self) -> list[str]:
        """Lines the handler printed since the last call (EMF lines, logs)."""
        self.log.seek(self._read)
        text = self.log.read()
        self._read += len(text)
        return text.splitlines()

    def exit_normally(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the gateway closing: the worker's loop ends, atexit runs
        return self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def shutdown_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_shutdown")


@pytest.fixture
def own_sql(shutdown_url: str, pg_connect: PgConnect) -> SQL:
    return emptied_store(pg_connect(shutdown_url))


class StartContainer(Protocol):
    """The `containers` fixture: a new container, ended when the test ends."""

    def __call__(self, env: dict[str, str], function: str = "HealthFunction") -> Container: ...


@pytest.fixture
def containers() -> Iterator[StartContainer]:
    started: list[Container] = []

    def start(env: dict[str, str], function: str = "HealthFunction") -> Container:
        started.append(Container(env, function))
        return started[-1]

    yield start
    for container in started:
        container.close()


def serve_probes(container: Container, seconds: float) -> int:
    served, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, _ = container.invoke(PROBES[served % len(PROBES)])
        assert status == 200
        served += 1
    return served


@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigterm_on_lambda"])
def test_a_probe_only_container_stores_every_request_when_it_ends(
    shutdown_url: str, own_sql: SQL, containers: StartContainer, ending: str
) -> None:
    # An interval longer than the run: after the first call (a new container's, after a
    # quiet spell: stored at once) nothing is due before the end, so the rest of what is
    # stored is what the shutdown flush stored.
    env = {"DATABASE_URL": shutdown_url, "METRICS_FLUSH_INTERVAL_S": "600"}
    runtime_api = RuntimeApiStandIn() if ending == "sigterm_on_lambda" else None
    if runtime_api is not None:
        env["AWS_LAMBDA_RUNTIME_API"] = runtime_api.address
    try:
        container = containers(env)
        served = serve_probes(container, SERVE_S)
        assert stored_probe_requests(own_sql) <= 1  # all but the first pending
        if ending == "exit":
            assert container.exit_normally() == 0
        else:
            assert container.terminate() == -signal.SIGTERM  # flushed, then died of it
        assert stored_probe_requests(own_sql) == served
        if runtime_api is not None:
            ((headers, body),) = runtime_api.registrations
            assert headers["Lambda-Extension-Name"] == "ops-metrics-shutdown-flush"
            assert body == {"events": []}
            (next_call,) = runtime_api.next_calls  # Lambda's Init ends only after this
            assert next_call["Lambda-Extension-Identifier"] == "ext-0001"
    finally:
        if runtime_api is not None:
            runtime_api.close()
    assert served > 50


@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_a_probe_only_container_prints_every_count_and_line_summary_when_it_ends(
    shutdown_url: str, own_sql: SQL, containers: StartContainer, ending: str
) -> None:
    """EMF aggregated over a 10 s interval and probe lines sampled at 0.1: what the
    container printed while serving plus what its shutdown printed accounts for every
    request, in the EMF sums and in the request lines (`linesRepresented`, then the
    shutdown's `linesNotWritten`); no written line stands for a line that was written."""
    env = {
        "DATABASE_URL": shutdown_url,
        "METRICS_FLUSH_INTERVAL_S": "10",
        "PROBE_LOG_SAMPLE_RATE": "0.1",
    }
    container = containers(env)
    served = serve_probes(container, 3.0)
    if ending == "exit":
        assert container.exit_normally() == 0
    else:
        assert container.terminate() == -signal.SIGTERM
    lines = [json.loads(line) for line in container.new_output() if line.startswith("{")]
    emf = [line for line in lines if "_aws" in line]
    assert sum(sum(line.get("health_probe_requests", [])) for line in emf) == served
    assert sum(len(line.get("http_request_duration_seconds", [])) for line in emf) == served
    written = [line for line in lines if line.get("type") == "request"]
    summaries = [
        line["linesNotWritten"] for line in lines if line.get("type") == "request_sampling"
    ]
    assert len(written) == -(-served // 10)  # every tenth, the first included
    # Once at shutdown, when a line was left unwritten after the last written one.
    assert summaries == ([(served - 1) % 10] if (served - 1) % 10 else [])
    assert sum(line["linesRepresented"] for line in written) + sum(summaries) == served
    assert served > 50


@pytest.mark.parametrize(
    ("signame", "previous"), [("SIGTERM", "custom"), ("SIGINT", "custom"), ("SIGINT", "default")]
)
def test_a_signal_flushes_then_the_previous_handler_runs(
    shutdown_url: str, own_sql: SQL, tmp_path: Path, signame: str, previous: str
) -> None:
    """A handler installed before ours still runs after the flush; Python's own SIGINT
    handler (KeyboardInterrupt) too."""
    marker = tmp_path / "previous-ran"
    install = f"signal.signal(signal.{signame}, previous)"
    if previous == "default":  # as in a terminal (a background job inherits SIGINT ignored)
        install = "signal.signal(signal.SIGINT, signal.default_int_handler)"
    code = f"""
import signal, sys, time
def previous(signum, frame):
    open({str(marker)!r}, "w").write("yes")
    sys.exit(3)
{install}
from tests.support.runtime import call_api, function_handler
health = function_handler("health")
for _ in range(7):
    assert call_api(health, "/health/live")[0] == 200
print("ready", flush=True)
time.sleep(30)
"""
    env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "DATABASE_URL": shutdown_url,
        "METRICS_FLUSH_INTERVAL_S": "600",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        while proc.stdout.readline().strip() != "ready":
            assert proc.poll() is None
        # A new container's first call (after a quiet spell) is stored at once, on the
        # flush thread: it may or may not have landed yet. The rest are pending.
        assert stored_probe_requests(own_sql) <= 1
        proc.send_signal(getattr(signal, signame))
        code_ = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    if previous == "custom":
        assert code_ == 3 and marker.read_text() == "yes"
    else:
        assert code_ != 0 and not marker.exists()  # KeyboardInterrupt ended it
    assert stored_probe_requests(own_sql) == 7


def test_a_hung_database_never_holds_a_health_route_past_its_budget(
    containers: StartContainer, blackhole: int
) -> None:
    budget_s = 1.0
    container = containers(
        {
            "DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{blackhole}/app",
            "HEALTH_DB_TIMEOUT_S": str(budget_s),
            "METRICS_FLUSH_INTERVAL_S": "0.3",  # deferred flushes fall due often
        }
    )
    container.invoke("/health/live")  # the cold start: imports, not the database
    live: list[float] = []
    checked: dict[str, list[float]] = {}
    for round_ in range(12):
        for _ in range(4):
            status, elapsed = container.invoke("/health/live")
            assert status == 200
            live.append(elapsed)
            time.sleep(0.1)  # lets the pending deltas age past the interval
        path = ("/health", "/health/ready", "/health/detailed")[round_ % 3]
        status, elapsed = container.invoke(path)
        assert status == 503
        checked.setdefault(path, []).append(elapsed)
    # Waiting on the database would cost this call at least the flush wait (1 s): no call
    # comes near. Liveness answers in well under 50 ms; the slowest call is allowed more
    # only for the scheduler of a shared 2-core machine (seen at load average 14).
    assert max(live) < 0.3, sorted(live)[-5:]
    assert sorted(live)[int(len(live) * 0.9)] < 0.05, sorted(live)[-5:]
    for path, times in checked.items():
        assert max(times) < budget_s + 0.5, (path, times)


def test_a_hung_database_never_holds_a_scrape_past_its_budget(
    containers: StartContainer, blackhole: int
) -> None:
    scrape_budget_s = 1.5
    metrics = containers(
        {
            "DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{blackhole}/app",
            "HEALTH_DB_TIMEOUT_S": "1",
            "METRICS_SCRAPE_BUDGET_S": str(scrape_budget_s),
            "METRICS_FLUSH_INTERVAL_S": "0.3",  # its own pending deltas fall due each time
        },
        function="MetricsFunction",
    )
    for _ in range(6):
        status, elapsed = metrics.invoke("/metrics")
        assert status == 200  # database_up 0, measured at the scrape
        assert elapsed < scrape_budget_s + 0.5, elapsed
        time.sleep(0.35)


@pytest.mark.parametrize("path", PROBES)
def test_a_probe_only_container_prints_emf_on_every_invocation_with_the_database_down(
    containers: StartContainer, closed_port: int, path: str
) -> None:
    container = containers({"DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{closed_port}/app"})
    for _ in range(5):
        container.invoke(path)
        # The worker's stdout is its reply channel: the handler's stdout (EMF) is its stderr.
        emf = [json.loads(line) for line in container.new_output() if line.startswith('{"_aws"')]
        assert any("health_probe_requests" in line for line in emf), emf
        if path != "/health/live":
            failures = [line["health_check_failures"] for line in emf if "check" in line]
            assert failures == [[1.0]], emf
