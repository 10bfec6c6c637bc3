"""Helpers for the metrics tests: a database of their own, scrapes parsed with
prometheus_client's parsers, and "containers" (separate OS processes) that record
and flush. No tests here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any
from unittest.mock import patch

import pg8000.native

from tests.support.db import SQL, runner
from tests.support.runtime import ApiReply, call_api, function_handler, log_handler
from tools import PYTHONPATH, ROOT
from tools.localdb.migrate import apply_url
from tools.localdb.pgcluster import PgCluster

METRIC_TABLES = "metric_values, metric_series, metric_flush_cursors, metric_families"
TOKEN = "metrics-test-token"

# (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_database(cluster: PgCluster, name: str) -> str:
    """A migrated database of the test module's own: totals stay exact whatever else runs."""
    url = cluster.create_database(name)
    apply_url(url)
    return url


def truncate_metrics(sql: SQL) -> None:
    sql(f"TRUNCATE {METRIC_TABLES}")


def emptied_store(conn: pg8000.native.Connection) -> SQL:
    """A test's own connection to its metrics database, nothing stored yet, as `sql`."""
    truncate_metrics(conn.run)
    return runner(conn)


def stored_probe_requests(sql: SQL) -> int:
    """http_requests_total as stored, summed over every series (what a container served)."""
    ((total,),) = sql(
        "SELECT coalesce(sum(v.value), 0) FROM metric_values v JOIN metric_series s "
        "ON s.id = v.series_id WHERE s.family = 'http_requests_total'"
    )
    return int(total)


def parse(body: str, *, openmetrics: bool = False) -> Samples:
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    samples: Samples = {}
    for family in text_string_to_metric_families(body):  # type: ignore[no-untyped-call]
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples


def emf_lines(out: str) -> list[dict[str, Any]]:
    """The EMF documents among a function's output lines."""
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


class EmfClock:
    """A simulated clock for the EMF buffer (ops.metrics.emf's `time`), so that windows
    follow the invocations' spacing, not the machine's speed: `with EmfClock() as clock`,
    then set `clock.t` (seconds) before each invocation. Starts 7 s past a UTC minute."""

    def __init__(self) -> None:
        import time

        self.t = 0.0
        self.wall0 = float(int(time.time()) // 60 * 60 + 7)

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.wall0 + self.t

    def __enter__(self) -> EmfClock:
        from ops.metrics import emf

        # emf's `time` is its `import time`, not a typed attribute: patched by name.
        self._patch = patch.object(emf, "time", self)
        self._patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._patch.stop()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape(headers: Mapping[str, str] | None = None) -> ApiReply:
    """One GET /metrics through the metrics function's handler, in this process."""
    return call_api(function_handler("metrics"), "/metrics", headers=dict(headers or {}))


def scrape_samples(*, openmetrics: bool = False) -> Samples:
    accept = "application/openmetrics-text;version=1.0.0" if openmetrics else "text/plain"
    status, _, body = scrape({"Accept": accept})
    assert status == 200, body
    return parse(body, openmetrics=openmetrics)


def counters_and_buckets(samples: Samples) -> Samples:
    """The stored samples that may never go down between scrapes. Live counters (the
    database's own statistics, read at scrape time) are left out: PostgreSQL resets them
    itself, after crash recovery for one, which Prometheus reads as the reset it is."""
    from ops.metrics.families import REGISTRY

    live = {name for name, family in REGISTRY.items() if family.live}
    return {
        k: v
        for k, v in samples.items()
        if k[0].endswith(("_total", "_bucket", "_count", "_sum")) and k[0] not in live
    }


# -- containers: separate OS processes, each a fresh "Lambda container" ------------------


def container_main(spec_json: str) -> None:
    """Entry point of a container process; see `run_containers` for the spec."""
    import io

    from ops.metrics import catalogue as m
    from ops.metrics import flush

    log_handler().setStream(io.StringIO())
    spec = json.loads(spec_json)
    for source, times in spec.get("webhook_failures", {}).items():
        for _ in range(times):
            m.WEBHOOK_FAILURES.labels(source=source).inc()
    for tool, observations in spec.get("tool_call_seconds", {}).items():
        for seconds in observations:
            m.TOOL_CALL_DURATION.labels(tool=tool).observe(seconds)
    if spec.get("flush"):
        assert flush(), "flush failed"
    invocations = spec.get("invocations", 0)
    if invocations:
        from tests.support.runtime import call_api as invoke
        from tests.support.runtime import function_handler as handler_of

        health = handler_of("health")
        tool_calls = m.TOOL_CALLS.labels(tool=spec["tool"], status="ok")
        for _ in range(invocations):
            tool_calls.inc()  # carried by the next call's database check, the last at exit
            status, _, _ = invoke(health, "/health/detailed")
            assert status == 200


def start_containers(database_url: str, specs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PYTHONPATH": PYTHONPATH,
        "POWERTOOLS_METRICS_NAMESPACE": "Test",
    }
    code = "import sys; from tests.support.metrics import container_main as m; m(sys.argv[1])"
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,  # EMF lines and logs
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]


def wait_containers(procs: list[subprocess.Popen[str]], timeout_s: float = 300) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, err[-3000:]


def run_containers(database_url: str, specs: list[dict[str, Any]]) -> None:
    wait_containers(start_containers(database_url, specs))
