"""Tracing (OpenTelemetry), end to end: each function runs in a fresh interpreter laid out
as Lambda lays it out (tests.support.lambda_child), with Lambda's X-Ray header set before
each invocation, and a loopback OTLP/HTTP receiver (tools.standins.otlp_receiver, set through the
standard OTEL_EXPORTER_OTLP_ENDPOINT) decodes what the exporter really sends.

Off (the default), nothing of OpenTelemetry is imported, in any function.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from ops.config import ConfigError, load
from ops.tracing import xray_region
from tests.support.db import SQL
from tests.support.lambda_child import run_in_fresh_process
from tools import ROOT
from tools.runtime.apigw import proxy_event
from tools.standins.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver

TOKEN = "tracing-token-0123456789"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}
ROOT_ID = "1-5759e988-bd862e3fe1be46a994272793"
TRACE_ID = "5759e988bd862e3fe1be46a994272793"  # the X-Ray root as an OpenTelemetry trace id
LAMBDA_SEGMENT = "53995c3f42cd8ad8"  # Parent=: the function's segment in X-Ray
SAMPLED = f"Root={ROOT_ID};Parent={LAMBDA_SEGMENT};Sampled=1"
NOT_SAMPLED = f"Root={ROOT_ID};Parent={LAMBDA_SEGMENT};Sampled=0"
SERVER = 2  # opentelemetry.proto Span.SpanKind.SPAN_KIND_SERVER
ERROR = 2  # Status.STATUS_CODE_ERROR
FUNCTIONS = ROOT / "functions"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as server:
        yield server


def run(
    function: str,
    events: list[dict[str, Any]],
    env: dict[str, str],
    trace_headers: list[str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    return run_in_fresh_process(
        FUNCTIONS / function,
        events,
        {"METRICS_AUTH_TOKEN": TOKEN, "POWERTOOLS_METRICS_NAMESPACE": "Test", **env},
        function_name=f"tracing-test-{function}",
        trace_headers=trace_headers,
    )


def traced_env(receiver: OtlpReceiver, database_url: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "DATABASE_URL": database_url,
    }


def detailed() -> dict[str, Any]:
    return proxy_event(
        method="GET", path="/health/detailed", resource="/health/detailed", headers=AUTHORIZED
    )


def scrape() -> dict[str, Any]:
    return proxy_event(method="GET", path="/metrics", resource="/metrics", headers=AUTHORIZED)


def by_name(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def invocation_of(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (root,) = [s for s in spans if s.name == name]
    assert root.trace_id == TRACE_ID and root.parent_span_id == LAMBDA_SEGMENT
    assert root.kind == SERVER
    return root


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> dict[str, list[ReceivedSpan]]:
    return by_name([s for s in spans if s.parent_span_id == parent.span_id])


def assert_no_secrets(receiver: OtlpReceiver, database_url: str) -> None:
    raw = receiver.raw()
    password = urlsplit(database_url).password
    assert password
    for secret in (password, database_url, TOKEN, "Bearer", "postgresql://"):
        assert secret.encode() not in raw, f"{secret!r} reached the trace receiver"


# -- off: nothing of OpenTelemetry is imported ---------------------------------------------

OFF = [
    pytest.param({}, id="default"),
    pytest.param({"OTEL_TRACES_EXPORTER": "none"}, id="exporter-none"),
    pytest.param({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, id="sdk-disabled"),
]


@pytest.mark.parametrize("env", OFF)
@pytest.mark.parametrize("function", ["health", "metrics", "retention"])
def test_off_imports_nothing_of_opentelemetry(
    database_url: str, function: str, env: dict[str, str]
) -> None:
    dry_run = {"dryRun": True}  # the whole run, deleting nothing of the shared database
    events = {"health": [detailed(), detailed()], "metrics": [scrape()], "retention": [dry_run]}
    results, output = run(
        function, events[function], {"DATABASE_URL": database_url, **env}, [SAMPLED]
    )
    assert all("raised" not in r for r in results), output[-3000:]
    assert [r["otel_loaded"] for r in results] == [[]] * len(results)


# -- on: the spans of /health/detailed, a scrape and a retention run -----------------------


def test_health_detailed_spans_under_the_lambda_trace(
    receiver: OtlpReceiver, database_url: str, closed_port: int
) -> None:
    # Every invocation's deltas are due at once: the second check carries the first's.
    env = {**traced_env(receiver, database_url), "METRICS_FLUSH_INTERVAL_S": "0"}
    env["MOLTBOT_GATEWAY_URL"] = f"http://127.0.0.1:{closed_port}"  # an HTTP dependency, down
    results, output = run("health", [detailed(), detailed()], env, [SAMPLED, SAMPLED])
    # A dependency down: /health/detailed says so with a 503 (status "warn").
    assert [r["status"] for r in results] == [503, 503], output[-3000:]
    assert results[0]["otel_loaded"]  # on: the SDK is there
    spans = receiver.spans()
    # Sent before each invocation returned (the child exits at once, as a frozen container).
    first, second = sorted({s.received_at for s in spans})[:2]
    assert first < results[0]["returned_at"] and second < results[1]["returned_at"]

    roots = [s for s in spans if s.name == "GET /health/detailed"]
    assert len(roots) == 2
    for root in roots:
        assert (root.trace_id, root.parent_span_id, root.kind) == (TRACE_ID, LAMBDA_SEGMENT, SERVER)
        assert root.attributes["http.route"] == "/health/detailed"
        assert root.attributes["http.request.method"] == "GET"
        assert root.attributes["http.response.status_code"] == 503
        assert (root.attributes["outcome"], root.status_code) == ("error", ERROR)
        assert root.resource["service.name"] == "realestate-backend"
        inside = children(spans, root)
        (db,) = inside["check database"]
        assert db.attributes == {
            "check": "database",
            "outcome": "up",
            "critical": True,
        }
        (http,) = inside["check moltbot"]
        assert http.attributes == {
            "check": "moltbot",
            "outcome": "down",
            "reason": "refused",
            "critical": False,
        }
        assert root.start_ns <= db.start_ns <= db.end_ns <= root.end_ns
    # The second invocation's database check carried the first one's metrics in its round
    # trip, on the check's worker thread: that flush is a child of the invocation too.
    (flush,) = children(spans, roots[1])["metrics flush"]
    assert flush.attributes == {"waited": True, "outcome": "stored"}
    assert_no_secrets(receiver, database_url)


def test_a_hung_database_shows_as_a_timed_out_check_span(
    receiver: OtlpReceiver, database_url: str
) -> None:
    """The check's span is recorded on the request thread when the check ends or is given
    up on: a database that accepts and never answers is a `timeout`, spanning the budget."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        env = {
            **traced_env(receiver, f"postgresql://app:pw-0123456789@127.0.0.1:{port}/app"),
            "HEALTH_DB_TIMEOUT_S": "0.3",
        }
        results, output = run("health", [detailed()], env, [SAMPLED])
    assert results[0]["status"] == 503, output[-3000:]
    spans = receiver.spans()
    root = invocation_of(spans, "GET /health/detailed")
    (db,) = children(spans, root)["check database"]
    assert db.attributes == {
        "check": "database",
        "outcome": "down",
        "reason": "timeout",
        "critical": True,
    }
    assert db.end_ns - db.start_ns >= 0.29e9  # given up on at its budget (0.3 s), not before
    assert b"pw-0123456789" not in receiver.raw()


def test_a_scrape_has_its_checks_store_read_and_flush(
    receiver: OtlpReceiver, database_url: str
) -> None:
    env = {**traced_env(receiver, database_url), "METRICS_FLUSH_INTERVAL_S": "0"}
    results, output = run("metrics", [scrape(), scrape()], env, [SAMPLED, SAMPLED])
    assert [r["status"] for r in results] == [200, 200], output[-3000:]
    spans = receiver.spans()
    roots = [s for s in spans if s.name == "GET /metrics"]
    assert len(roots) == 2
    for root in roots:
        assert (root.trace_id, root.parent_span_id) == (TRACE_ID, LAMBDA_SEGMENT)
        assert root.attributes["http.response.status_code"] == 200
        inside = children(spans, root)
        assert [s.attributes["outcome"] for s in inside["check database"]] == ["up"]
        (read,) = inside["metrics store read"]  # on the check's worker, still in the invocation
        assert read.attributes == {"outcome": "ok"}
    # The second scrape's database check carried the first one's counts, on its worker.
    (flush,) = children(spans, roots[1])["metrics flush"]
    assert flush.attributes == {"waited": True, "outcome": "stored"}
    assert_no_secrets(receiver, database_url)


def test_a_refused_token_is_traced_as_401_without_the_token(
    receiver: OtlpReceiver, database_url: str
) -> None:
    bad = proxy_event(
        method="GET",
        path="/metrics",
        resource="/metrics",
        headers={"Authorization": "Bearer guess-0123456789"},
    )
    results, output = run("metrics", [bad], traced_env(receiver, database_url), [SAMPLED])
    assert results[0]["status"] == 401, output[-3000:]
    root = invocation_of(receiver.spans(), "GET /metrics")
    assert root.attributes["http.response.status_code"] == 401
    assert b"guess-0123456789" not in receiver.raw()
    assert_no_secrets(receiver, database_url)


@pytest.fixture
def expired_rows(sql: SQL) -> int:
    sql(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) "
        "SELECT 'test', 'u', now() - interval '100 days' FROM generate_series(1, 7)"
    )
    return int(
        sql("SELECT count(*) FROM chat_sessions WHERE updated_at < now() - interval '90 days'")[0][
            0
        ]
    )


def test_a_retention_run_has_a_span_per_batch(
    receiver: OtlpReceiver, database_url: str, expired_rows: int
) -> None:
    scheduled = json.loads((ROOT / "events" / "retention-scheduler.json").read_text())
    scheduled["scheduledTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    policies = [{"table": "chat_sessions", "column": "updated_at", "maxAgeDays": 90}]
    env = {**traced_env(receiver, database_url), "RETENTION_POLICIES": json.dumps(policies)}
    results, output = run("retention", [scheduled], env, [SAMPLED])
    assert "raised" not in results[0], output[-3000:]
    spans = receiver.spans()
    root = invocation_of(spans, "retention run")
    assert root.attributes["outcome"] == "ok"
    assert min(s.received_at for s in spans) < results[0]["returned_at"]
    inside = children(spans, root)
    batches = inside["retention batch"]
    assert {b.attributes["table"] for b in batches} == {"chat_sessions"}
    assert sum(int(b.attributes["rows"]) for b in batches) == expired_rows
    assert all(b.attributes["outcome"] == "ok" for b in batches)
    assert all(b.attributes["mode"] in ("keyset", "ctid") for b in batches)
    assert [f.attributes["outcome"] for f in inside["metrics flush"]] == ["stored"]
    assert_no_secrets(receiver, database_url)


def test_a_failed_retention_run_is_an_error_span_and_still_raises(
    receiver: OtlpReceiver, database_url: str
) -> None:
    policies = [{"table": "no_such_table", "column": "created_at", "maxAgeDays": 30}]
    env = {**traced_env(receiver, database_url), "RETENTION_POLICIES": json.dumps(policies)}
    results, output = run("retention", [{}], env, [SAMPLED])
    assert "raised" in results[0], output[-3000:]
    root = invocation_of(receiver.spans(), "retention run")
    assert root.status_code == ERROR
    assert root.attributes["outcome"] == "error"
    assert root.attributes["error.type"] == results[0]["raised"]
    assert_no_secrets(receiver, database_url)


def test_an_unsampled_lambda_trace_sends_nothing(receiver: OtlpReceiver, database_url: str) -> None:
    results, output = run("health", [detailed()], traced_env(receiver, database_url), [NOT_SAMPLED])
    assert results[0]["status"] == 200, output[-3000:]
    assert receiver.spans() == []


def test_a_silent_trace_endpoint_delays_an_invocation_by_the_bound_at_most(
    database_url: str,
) -> None:
    """A receiver that accepts and never answers: the invocation still answers, after at
    most the export bound, and the log says its spans were dropped."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "DATABASE_URL": database_url,
        }
        results, output = run("health", [detailed()], env, [SAMPLED])
    assert results[0]["status"] == 200, output[-3000:]
    warnings = [json.loads(x) for x in output.splitlines() if '"type":"tracing"' in x]
    assert [(w["level"], w["message"]) for w in warnings] == [
        ("WARNING", "spans not sent before the invocation returned: dropped")
    ]
    assert warnings[0]["status"] in ("flush_timeout", "export_failed")
    # The bound (1 s) plus the invocation's own work; generous for a loaded machine.
    assert results[0]["returned_at"] - results[0]["started_at"] < 10


# -- settings and the X-Ray endpoint -------------------------------------------------------


def test_only_the_shipped_protocol_is_accepted() -> None:
    assert load({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}).otel_exporter_protocol
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL must be one of"):
        load({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER must be one of otlp, none"):
        load({"OTEL_TRACES_EXPORTER": "jaeger"})


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "OTLP"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_on_only_with_the_otlp_exporter_and_the_sdk_enabled(
    env: dict[str, str], on: bool
) -> None:
    assert load(env).tracing_configured is on


def test_xray_endpoints_are_recognised_for_signing() -> None:
    assert xray_region("https://xray.eu-west-1.amazonaws.com/v1/traces") == "eu-west-1"
    assert xray_region("https://xray.us-gov-west-1.amazonaws.com/v1/traces") == "us-gov-west-1"
    assert xray_region("http://xray.eu-west-1.amazonaws.com/v1/traces") is None  # never unsigned
    assert xray_region("https://xray.eu-west-1.amazonaws.com.evil.test/v1/traces") is None
    assert xray_region("http://localhost:4318/v1/traces") is None


def test_exports_to_xray_are_signed_with_sigv4(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session the exporter gets for X-Ray signs each request for service `xray` in the
    endpoint's region, with the function's credentials (here: test ones)."""
    import requests

    from ops.tracing import _sigv4_session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-example")
    session = _sigv4_session("eu-west-1")
    url = "https://xray.eu-west-1.amazonaws.com/v1/traces"
    request = requests.Request(
        "POST", url, data=b"\x0a\x00", headers={"Content-Type": "application/x-protobuf"}
    )
    prepared = session.prepare_request(request)
    auth = prepared.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/xray/aws4_request" in auth
    assert prepared.headers["X-Amz-Security-Token"] == "session-example"
    assert "secret-example" not in json.dumps(dict(prepared.headers))


def test_a_tracer_that_cannot_start_leaves_tracing_off_and_says_so(
    monkeypatch: pytest.MonkeyPatch, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """A broken install (a package missing from the layer, say) must not fail the function."""
    import ops.tracing as tracing

    def broken(*args: object) -> None:
        raise ImportError("No module named 'opentelemetry.sdk'")

    monkeypatch.setattr(tracing, "_Tracing", broken)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    tracing.reset()
    try:
        assert tracing.configure() is False
        with tracing.span("anything") as s:  # the no-op, as when off
            s.set(rows=1)
    finally:
        monkeypatch.delenv("OTEL_TRACES_EXPORTER")
        tracing.reset()
    (line,) = [x for x in log_lines() if x.get("type") == "tracing"]
    assert (line["level"], line["status"]) == ("ERROR", "disabled")
    assert "opentelemetry.sdk" in line["error"]
