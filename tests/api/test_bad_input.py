"""No event, header, path, query or body is a 500: 400/401/404/405/414 JSON, echoed values
bounded, and every request still writes its one request log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.runtime import function_handler
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext


@pytest.fixture
def strict_log() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The log as Lambda writes it: a UTF-8 stream that refuses what it cannot encode."""
    from ops.log import logger

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)  # Powertools' stdout handler
    previous = handler.setStream(stream)
    yield lambda: [json.loads(line) for line in raw.getvalue().decode().split("\n") if line]
    handler.setStream(previous)


def invoke(function: str, event: Any) -> tuple[int, dict[str, Any]]:
    resp = function_handler(function)(event, LambdaContext(function, 10))
    assert resp["headers"]["Content-Type"] == "application/json"
    return resp["statusCode"], json.loads(resp["body"])


def requests(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in lines if x.get("type") == "request"]


def event(path: str = "/health/live", **changes: Any) -> dict[str, Any]:
    base = proxy_event(method="GET", path=path, resource=path)
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "resource", [["/health/live"], {"a": 1}, 5, None, "", "/health/nope", {"/health/live": 1}]
)
def test_resource_of_any_type_routes_by_path_not_500(
    strict_log: Callable[[], list[dict[str, Any]]], resource: object
) -> None:
    resp = function_handler("health")(event(resource=resource), LambdaContext("health", 5))
    assert resp["statusCode"] == 200
    (line,) = requests(strict_log())
    assert line["route"] == "/health/live"


@pytest.mark.parametrize("path", ["/health/\udcff", "/\ud800", "/a\udfff\ud800b"])
def test_a_lone_surrogate_in_the_path_is_404_with_its_log_line(
    strict_log: Callable[[], list[dict[str, Any]]], path: str
) -> None:
    status, body = invoke("health", event(path))
    assert status == 404 and body["error"] == "not_found"
    (line,) = requests(strict_log())
    assert line["statusCode"] == 404 and line["route"] == "unmatched"
    assert "\\ud" in line["url"]  # escaped, not lost


def test_a_lone_surrogate_in_the_method_is_405_with_its_log_line(
    strict_log: Callable[[], list[dict[str, Any]]],
) -> None:
    status, body = invoke("health", event(httpMethod="G\udcffT"))
    assert status == 405 and body["error"] == "method_not_allowed"
    (line,) = requests(strict_log())
    assert line["statusCode"] == 405


@pytest.mark.parametrize("function", ["health", "metrics"])
def test_a_1mb_path_is_414_and_never_echoed_whole(
    strict_log: Callable[[], list[dict[str, Any]]], function: str
) -> None:
    path = "/" + "a" * 1_000_000
    resp = function_handler(function)(event(path), LambdaContext(function, 5))
    assert resp["statusCode"] == 414 and len(resp["body"]) < 300
    assert json.loads(resp["body"])["error"] == "uri_too_long"
    (line,) = requests(strict_log())
    assert line["statusCode"] == 414 and len(json.dumps(line)) < 1500


def test_echoed_values_are_truncated(strict_log: Callable[[], list[dict[str, Any]]]) -> None:
    path = "/" + "b" * 5000
    status, body = invoke("health", event(path))
    assert status == 404 and len(body["message"]) < 320
    assert body["message"].startswith("no route for /bbbb") and "5001 chars" in body["message"]
    status, body = invoke("health", event(httpMethod="X" * 100_000))
    assert status == 405 and len(body["message"]) < 400
    lines = requests(strict_log())
    assert len(lines) == 2 and all(len(json.dumps(x)) < 1500 for x in lines)


@pytest.mark.parametrize(
    "changes",
    [
        {"headers": {"Accept": ["a", "b"], "X-N": 5, "X-D": {"a": 1}, "X-None": None}},
        {"headers": {"Authorization": {"Bearer": "x"}}},
        {"queryStringParameters": {"a": ["x"], "b": None, "\udcff": "\ud800"}},
        {"requestContext": {"requestId": ["not", "a", "string"]}},
        {"requestContext": {"requestId": "r" * 10_000}},
        {"requestContext": None, "headers": None, "queryStringParameters": None},
        {"body": "\ud800" * 10, "isBase64Encoded": "maybe"},
        {"multiValueHeaders": "junk", "pathParameters": {"id": 5}, "stageVariables": 7},
    ],
)
@pytest.mark.parametrize("function", ["health", "metrics"])
def test_odd_but_well_formed_events_are_never_500(
    strict_log: Callable[[], list[dict[str, Any]]], function: str, changes: dict[str, Any]
) -> None:
    path = "/metrics" if function == "metrics" else "/health/live"
    resp = function_handler(function)(event(path, **changes), LambdaContext(function, 5))
    assert resp["statusCode"] in (200, 503)
    (line,) = requests(strict_log())
    assert len(json.dumps(line)) < 1500


@pytest.mark.parametrize(
    "event_",
    [
        None,
        [],
        "x",
        5,
        {"httpMethod": ["GET"], "path": "/"},
        {"httpMethod": "GET", "path": "/health", "pathParameters": [1]},
    ],
)
@pytest.mark.parametrize("function", ["health", "metrics"])
def test_malformed_events_write_their_request_line(
    strict_log: Callable[[], list[dict[str, Any]]], function: str, event_: object
) -> None:
    status, body = invoke(function, event_)
    assert status == 400 and body["error"] == "bad_request"
    (line,) = requests(strict_log())
    assert line["statusCode"] == 400 and line["method"] == "UNKNOWN"
