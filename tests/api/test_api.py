"""Routing, bad input and the request log line, through the real health handler."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.runtime import FunctionInvoker, function_handler
from tools.runtime.handler import LambdaContext


def test_unknown_route_is_404_json(db_env: str, health_api: FunctionInvoker) -> None:
    status, _, body = health_api("/nope", resource="/{proxy+}")
    assert status == 404
    assert body["error"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_wrong_method_is_405_with_allow(
    db_env: str, health_api: FunctionInvoker, method: str
) -> None:
    status, headers, body = health_api("/health", method=method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD, OPTIONS"
    assert body["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready"])
def test_head_answers_the_gets_status_and_headers_with_an_empty_body(
    db_env: str, path: str
) -> None:
    """Load balancers and uptime checkers probe with HEAD."""
    from tests.support.runtime import call_api

    handler = function_handler("health")
    got_status, got_headers, got_body = call_api(handler, path)
    head_status, head_headers, head_body = call_api(handler, path, method="HEAD")
    assert (head_status, head_headers, head_body) == (got_status, got_headers, "")
    assert got_body  # the GET has one


def test_options_says_which_methods_a_route_answers(
    db_env: str, health_api: FunctionInvoker
) -> None:
    status, headers, body = health_api("/health/detailed", method="OPTIONS")
    assert status == 204 and body == ""
    assert headers["Allow"] == "GET, HEAD, OPTIONS"
    assert not any(name.lower().startswith("access-control-") for name in headers)


@pytest.mark.parametrize(
    "event",
    [
        None,
        "not an object",
        {},
        {"httpMethod": "GET"},
        {"path": "/health"},
        {"httpMethod": "GET", "path": "/health", "headers": "oops"},
        {"httpMethod": "GET", "path": "/health", "body": {"a": 1}},
        {"httpMethod": 5, "path": "/health"},
    ],
)
def test_malformed_event_is_400_json_and_an_error_log(
    event: object, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    handler = function_handler("health")
    resp = handler(event, LambdaContext("health", 5))
    assert resp["statusCode"] == 400
    body = json.loads(resp["body"])
    assert body["error"] == "bad_request" and body["message"]
    errors = [line for line in log_lines() if line["level"] == "ERROR"]
    assert errors and errors[0]["type"] == "error"
    assert not any("Traceback" in json.dumps(line) for line in log_lines())


def test_handler_exception_is_500_json(
    db_env: str,
    health_api: FunctionInvoker,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:

    def boom() -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr("health.app.configured_checks", boom)
    status, _, body = health_api("/health/ready")
    assert status == 500
    assert body["error"] == "internal_error"
    lines = log_lines()
    assert any(line.get("type") == "error" and "kaput" in line.get("error", "") for line in lines)
    (request_line,) = [line for line in lines if line.get("type") == "request"]
    assert request_line["statusCode"] == 500


def test_request_log_line_fields(
    db_env: str, health_api: FunctionInvoker, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    status, _, _ = health_api("/health", headers={"User-Agent": "t"})
    (line,) = [entry for entry in log_lines() if entry.get("type") == "request"]
    assert line["method"] == "GET"
    assert line["url"] == "/health"
    assert line["route"] == "/health"
    assert line["statusCode"] == status == 200
    assert isinstance(line["duration"], float) and line["duration"] >= 0
    assert line["requestId"] and line["correlation_id"] == line["requestId"]
    assert line["service"] == "realestate-backend"
    assert line["level"] == "INFO"
    assert line["function_name"] == "test-function"
    assert "cold_start" in line


def test_no_password_in_any_log_line(
    health_api: FunctionInvoker,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
    closed_port: int,
    blackhole: int,
) -> None:
    secret = "Pa55w0rd-never-logged"
    monkeypatch.setenv("HEALTH_DB_TIMEOUT_S", "0.5")
    for port in (closed_port, blackhole):
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{secret}@127.0.0.1:{port}/app")
        from ops import db
        from ops.config import settings

        settings.cache_clear()
        db.reset()
        for path in ("/health", "/health/ready", "/health/detailed"):
            health_api(path)
    text = json.dumps(log_lines())
    assert "health check failed" in text  # the failures were logged...
    assert secret not in text  # ...without the password
    assert "app@127.0.0.1" in text  # but with a target an operator can use


def test_a_protected_route_stays_closed_until_an_authorizer_is_installed() -> None:
    """The router knows no token: a bare Api fails closed on auth routes (ops.wiring
    installs the bearer check), and open routes answer as usual."""
    from ops.api import Api, json_response

    app = Api()
    app.get("/secret", auth=True)(lambda req: json_response(200, {"secret": True}))
    app.get("/open")(lambda req: json_response(200, {"open": True}))
    event = {"httpMethod": "GET", "path": "/secret", "resource": "/secret", "headers": {}}
    closed = app.lambda_handler(event, LambdaContext("bare", 3))
    assert closed["statusCode"] == 503
    assert json.loads(closed["body"])["error"] == "auth_misconfigured"
    opened = app.lambda_handler(
        {**event, "path": "/open", "resource": "/open"}, LambdaContext("bare", 3)
    )
    assert opened["statusCode"] == 200
