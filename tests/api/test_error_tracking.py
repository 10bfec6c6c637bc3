"""Error tracking (Sentry), end to end: every function runs in a fresh interpreter laid
out as Lambda lays it out, and a loopback server standing in for Sentry's ingest
receives what the SDK really sends.

The child process (tests.support.lambda_child) ends with os._exit right after its last
invocation, as a frozen Lambda container would: no atexit flush, so an event that
arrives was sent before the invocation returned.
"""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ops.config import ConfigError, load
from ops.error_tracking import FLUSH_TIMEOUT_S
from ops.event_scrubber import FILTERED, EventScrubber
from tests.support.lambda_child import run_in_fresh_process
from tools import ROOT
from tools.runtime.apigw import proxy_event
from tools.standins.sentry_ingest import SentryIngest, sentry_ingest

TOKEN = "metrics-token-0123456789"
VERSION = "9.9.9"
FUNCTION_NAME = "bundle-test-fn"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}

BOOM_APP = """
import os
import time

from ops.api import json_response
from ops.wiring import service_api

app = service_api()


@app.get("/ok")
def ok(req):
    return json_response(200, {"status": "ok"})


@app.get("/slow")
def slow(req):
    time.sleep(1.5)
    return json_response(200, {"status": "ok"})


@app.route("POST", "/orders/{id}")
def fails(req):
    url = os.environ["DATABASE_URL"]
    token = os.environ["METRICS_AUTH_TOKEN"]
    raise RuntimeError(f"cannot reach {url} (Authorization: Bearer {token}) for {req.body}")


lambda_handler = app.lambda_handler
"""


@pytest.fixture
def ingest() -> Iterator[SentryIngest]:
    with sentry_ingest() as server:
        yield server


@pytest.fixture
def boom_dir(tmp_path: Path) -> Path:
    """An API function of the bundle's shape whose route handler raises."""
    folder = tmp_path / "boom"
    folder.mkdir()
    (folder / "__init__.py").touch()
    (folder / "app.py").write_text(textwrap.dedent(BOOM_APP))
    return folder


def invoke(
    code_dir: Path,
    events: list[dict[str, Any]],
    env: dict[str, str],
    *,
    dsn_secret: str | None = None,
    lambda_runtime: bool = False,
    timeout_s: float = 10,
) -> tuple[list[dict[str, Any]], str]:
    return run_in_fresh_process(
        code_dir,
        events,
        {
            "POWERTOOLS_METRICS_NAMESPACE": "Test",
            "SERVICE_VERSION": VERSION,
            "ENVIRONMENT": "staging",
            "METRICS_AUTH_TOKEN": TOKEN,
            **env,
        },
        function_name=FUNCTION_NAME,
        dsn_secret=dsn_secret,
        lambda_runtime=lambda_runtime,
        timeout_s=timeout_s,
    )


def failing_request() -> dict[str, Any]:
    """A request carrying every kind of credential a caller could send."""
    return proxy_event(
        method="POST",
        path="/orders/42",
        resource="/orders/{id}",
        query="access_token=query-secret-1234",
        headers={
            "Authorization": "Bearer header-secret-1234",
            "Cookie": "session=cookie-secret-1234",
            "X-Api-Key": "apikey-secret-1234",
            "Accept": "application/json",
        },
        body=b'{"password": "body-secret-1234"}',
    )


def assert_no_secrets(text: str, database_url: str) -> None:
    password = urlsplit(database_url).password
    assert password
    for secret in (
        password,
        database_url,
        TOKEN,
        "header-secret-1234",
        "cookie-secret-1234",
        "apikey-secret-1234",
        "body-secret-1234",
        "query-secret-1234",
    ):
        assert secret not in text, f"{secret!r} reached the Sentry ingest"


def exception_types(event: dict[str, Any]) -> list[str]:
    return [v["type"] for v in event["exception"]["values"]]


# -- reported once, with the invocation's identity, without secrets ---------------------


# "lambda-runtime": behind a stand-in for the runtime's bootstrap, so that the SDK's
# AwsLambdaIntegration is active and wraps the handler as it does on Lambda.
RUNTIMES = pytest.mark.parametrize("lambda_runtime", [False, True], ids=["plain", "lambda-runtime"])


@RUNTIMES
def test_a_route_handler_exception_is_reported_once_with_its_request_id(
    ingest: SentryIngest, boom_dir: Path, database_url: str, lambda_runtime: bool
) -> None:
    ok = proxy_event(method="GET", path="/ok", resource="/ok")
    failing = failing_request()
    results, output = invoke(
        boom_dir,
        [ok, failing, ok],
        {"SENTRY_DSN": ingest.dsn, "DATABASE_URL": database_url},
        lambda_runtime=lambda_runtime,
    )
    assert [r.get("status") for r in results] == [200, 500, 200], output[-3000:]
    events = ingest.events()
    assert len(events) == 1, events  # the 200s send nothing; the 500 exactly one event
    # Sent before the failing invocation returned, not left queued for a frozen container.
    assert ingest.event_received_at()[0] < results[1]["returned_at"]
    (event,) = events
    assert exception_types(event) == ["RuntimeError"]
    assert event["exception"]["values"][0]["mechanism"]["handled"] is False  # a crash
    assert ("lambda" in event.get("extra", {})) is lambda_runtime  # the integration's context
    request_id = failing["requestContext"]["requestId"]
    assert event["tags"]["request_id"] == request_id
    assert event["tags"]["route"] == "/orders/{id}"  # the template, not the raw path
    assert event["tags"]["method"] == "POST"
    assert event["tags"]["function_name"] == FUNCTION_NAME
    assert event["release"] == f"realestate-backend@{VERSION}"
    assert event["environment"] == "staging"
    assert event["transaction"] == "POST /orders/{id}"
    # The request log line carries the same id: Sentry event -> CloudWatch lines.
    assert f'"correlation_id":"{request_id}"' in output
    assert_no_secrets(ingest.raw(), database_url)
    assert FILTERED in event["exception"]["values"][0]["value"]


@RUNTIMES
def test_a_failed_retention_run_is_reported_once_and_still_raises(
    ingest: SentryIngest, database_url: str, lambda_runtime: bool
) -> None:
    policies = [{"table": "no_such_table", "column": "created_at", "maxAgeDays": 30}]
    results, output = invoke(
        ROOT / "functions" / "retention",
        [{}],
        {
            "SENTRY_DSN": ingest.dsn,
            "DATABASE_URL": database_url,
            "RETENTION_POLICIES": json.dumps(policies),
        },
        lambda_runtime=lambda_runtime,
    )
    (result,) = results
    assert "raised" in result, output[-3000:]  # Scheduler's retries and the DLQ still see it
    events = ingest.events()
    assert len(events) == 1, events
    assert ingest.event_received_at()[0] < result["returned_at"]
    (event,) = events
    assert exception_types(event)[-1] == result["raised"]
    assert ("lambda" in event.get("extra", {})) is lambda_runtime
    assert event["tags"]["request_id"] == result["aws_request_id"]
    assert event["tags"]["route"] == "retention"
    assert event["tags"]["function_name"] == FUNCTION_NAME
    assert event["release"] == f"realestate-backend@{VERSION}"
    assert event["environment"] == "staging"
    assert_no_secrets(ingest.raw(), database_url)


def test_in_lambda_an_invocation_near_its_timeout_is_reported(
    ingest: SentryIngest, boom_dir: Path, database_url: str
) -> None:
    """The runtime kills a timed-out invocation: only the SDK's timeout warning, 1.5 s
    before the deadline, can tell Sentry. Here the deadline is 2 s and the route takes 1.5 s."""
    slow = proxy_event(method="GET", path="/slow", resource="/slow")
    results, output = invoke(
        boom_dir,
        [slow],
        {"SENTRY_DSN": ingest.dsn, "DATABASE_URL": database_url},
        lambda_runtime=True,
        timeout_s=2,
    )
    assert results[0]["status"] == 200, output[-3000:]
    (event,) = ingest.events()
    assert exception_types(event) == ["ServerlessTimeoutWarning"]
    assert event["tags"]["function_name"] == FUNCTION_NAME
    assert ingest.event_received_at()[0] < results[0]["returned_at"]


def test_an_unresponsive_ingest_delays_a_failure_by_the_flush_budget_at_most(
    boom_dir: Path, database_url: str
) -> None:
    """Sentry down or slow: the 500 still goes out, after FLUSH_TIMEOUT_S, and the log says
    the report was not confirmed. (A socket that listens but never answers.)"""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"http://key@127.0.0.1:{silent.getsockname()[1]}/1"
        results, output = invoke(
            boom_dir, [failing_request()], {"SENTRY_DSN": dsn, "DATABASE_URL": database_url}
        )
    (result,) = results
    assert result["status"] == 500
    assert result["returned_at"] - result["started_at"] < FLUSH_TIMEOUT_S + 1.5
    warnings = [json.loads(x) for x in output.splitlines() if '"flush_timeout"' in x]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING", output[-3000:]


def test_the_dsn_can_come_from_secrets_manager(
    ingest: SentryIngest, boom_dir: Path, database_url: str
) -> None:
    results, output = invoke(
        boom_dir,
        [failing_request()],
        {"DATABASE_URL": database_url},
        dsn_secret=ingest.dsn,
    )
    assert results[0]["status"] == 500, output[-3000:]
    assert len(ingest.events()) == 1
    assert ingest.dsn not in output  # the DSN is never logged


# -- off: nothing imported, nothing sent ------------------------------------------------


@pytest.mark.parametrize(
    ("function", "events"),
    [
        (
            "health",
            [
                proxy_event(method="GET", path=p, resource=p, headers=AUTHORIZED)
                for p in ("/health", "/health/live", "/health/ready", "/health/detailed")
            ]
            + [proxy_event(method="GET", path="/nope", resource="/nope"), {"not": "apigw"}],
        ),
        (
            "metrics",
            [proxy_event(method="GET", path="/metrics", resource="/metrics", headers=AUTHORIZED)],
        ),
        ("retention", [{}, {"dryRun": True}]),
        ("boom", [failing_request()]),
    ],
)
def test_without_a_dsn_sentry_sdk_is_never_imported(
    function: str, events: list[dict[str, Any]], boom_dir: Path, database_url: str
) -> None:
    code_dir = boom_dir if function == "boom" else ROOT / "functions" / function
    results, output = invoke(code_dir, events, {"DATABASE_URL": database_url})
    assert results and not any(r["sentry_loaded"] for r in results), results
    statuses = [r.get("status", r.get("raised")) for r in results]
    assert 500 not in statuses or function == "boom", (statuses, output[-3000:])
    if function == "boom":
        assert statuses == [500]
    assert "error tracking" not in output  # not even a "turned off" line: nothing to say


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SENTRY_DSN": "https://sentry.example.com/1"}, "SENTRY_DSN must be a Sentry DSN"),
        (
            {"SENTRY_TRACES_SAMPLE_RATE": "2"},
            "SENTRY_TRACES_SAMPLE_RATE must be a number from 0 to 1",
        ),
        ({"SENTRY_SAMPLE_RATE": "lots"}, "SENTRY_SAMPLE_RATE must be a number from 0 to 1"),
    ],
)
def test_bad_settings_are_refused_like_every_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        load(env)
    assert "sentry.example.com" not in str(refused.value)  # a DSN is never echoed


@pytest.mark.parametrize(
    ("secret", "env", "reason"),
    [
        (
            None,
            {
                "SENTRY_DSN_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:000000000000:secret:x",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: the read fails
                "AWS_MAX_ATTEMPTS": "1",
            },
            "the DSN secret could not be read",
        ),
        ("https://sentry.example.com/1", {}, "the DSN secret is not a Sentry DSN"),
    ],
    ids=["unreadable", "malformed"],
)
def test_an_unusable_dsn_secret_turns_error_tracking_off_not_the_function(
    secret: str | None, env: dict[str, str], reason: str, boom_dir: Path, database_url: str
) -> None:
    ok = proxy_event(method="GET", path="/ok", resource="/ok")
    results, output = invoke(
        boom_dir, [ok, failing_request()], {"DATABASE_URL": database_url, **env}, dsn_secret=secret
    )
    assert [r["status"] for r in results] == [200, 500]
    assert not any(r["sentry_loaded"] for r in results)
    off = [json.loads(x) for x in output.splitlines() if "error tracking off" in x]
    assert len(off) == 1 and reason in off[0]["message"], output[-3000:]
    assert "sentry.example.com" not in output  # the secret's text is never logged


# -- the scrubber on its own ------------------------------------------------------------


def test_scrubber_removes_credentials_wherever_they_appear() -> None:
    url = "postgresql://app:s3cr3t-pw@db.internal:5432/app"
    scrubber = EventScrubber([url, "tok-abcdef"])
    event = {
        "message": f"connect {url} failed; password=hunter2 token: 'abc123'",
        "request": {
            "url": "https://api/x",
            "data": '{"card": "4111"}',
            "cookies": "sid=1",
            "query_string": "token=q",
            "headers": {"Authorization": "Bearer tok-abcdef", "Accept": "*/*", "X-Key": "k"},
        },
        "exception": {
            "values": [
                {
                    "type": "OperationalError",
                    "value": "postgres://other:pw2@h/db Basic dXNlcjpwYXNz",
                    "stacktrace": {"frames": [{"function": "f", "vars": {"password": "x"}}]},
                }
            ]
        },
        "extra": {"db": {"DATABASE_URL": "anything", "dsn": "x", "rows": 3}},
        "breadcrumbs": {"values": [{"message": "tok-abcdef used", "data": {"secret": "y"}}]},
        "user": {"ip_address": "10.0.0.1", "id": "u"},
    }
    out = scrubber.before_send(event)
    text = json.dumps(out)
    for secret in ("s3cr3t-pw", "hunter2", "abc123", "4111", "sid=1", "tok-abcdef", "pw2"):
        assert secret not in text, secret
    assert "dXNlcjpwYXNz" not in text and "10.0.0.1" not in text
    assert out["request"]["headers"] == {"Accept": "*/*"}
    assert "vars" not in out["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert out["extra"]["db"] == {"DATABASE_URL": FILTERED, "dsn": FILTERED, "rows": 3}
    # What is not a credential stays readable.
    assert out["exception"]["values"][0]["type"] == "OperationalError"
    assert "postgres://other:[Filtered]@h/db" in text
    assert out["user"] == {"id": "u"}
