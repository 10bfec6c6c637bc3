"""The local gateway at its edges, as API Gateway behaves: `{param}` and `{proxy+}` routes
with pathParameters, bounded bodies read with a timeout, JSON for every malformed request."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.localdb.pgcluster import free_port
from tools.runtime.apigw import match_template, resolve
from tools.runtime.gateway import MAX_BODY_BYTES, READ_TIMEOUT_S, Gateway, make_server
from tools.standins.loopback import serving

TEMPLATES = [
    "/health",
    "/listings/{id}",
    "/listings/new",
    "/listings/{id}/photos/{photo}",
    "/files/{proxy+}",
    "/{proxy+}",
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/health", ("/health", {})),
        ("/listings/42", ("/listings/{id}", {"id": "42"})),
        ("/listings/new", ("/listings/new", {})),  # a literal beats a parameter
        ("/listings/a%20b", ("/listings/{id}", {"id": "a b"})),
        ("/listings/7/photos/9", ("/listings/{id}/photos/{photo}", {"id": "7", "photo": "9"})),
        ("/files/a/b/c.txt", ("/files/{proxy+}", {"proxy": "a/b/c.txt"})),
        ("/files", ("/{proxy+}", {"proxy": "files"})),  # {proxy+} needs one segment or more
        ("/other/path", ("/{proxy+}", {"proxy": "other/path"})),
        ("/", None),
    ],
)
def test_templates_resolve_as_api_gateway_does(
    path: str, expected: tuple[str, dict[str, str]] | None
) -> None:
    assert resolve(TEMPLATES, path) == expected


def test_no_template_no_match() -> None:
    assert resolve(["/health"], "/healthz") is None
    assert match_template("/listings/{id}", "/listings") is None
    assert match_template("/listings/{id}", "/listings/1/2") is None


ECHO = """
import json

def lambda_handler(event, context):
    keys = ("resource", "path", "pathParameters", "httpMethod", "body")
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({k: event.get(k) for k in keys})}
"""

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {task_root}
      Handler: echo.app.lambda_handler
      Timeout: 5
      Events:
        Listing: {{Type: Api, Properties: {{Path: "/listings/{{id}}", Method: get}}}}
        NewListing: {{Type: Api, Properties: {{Path: /listings/new, Method: get}}}}
        Files: {{Type: Api, Properties: {{Path: "/files/{{proxy+}}", Method: any}}}}
"""


def request(port: int, raw: bytes, read_timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` as is, return the response (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(raw)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


@pytest.fixture
def echo_gateway(tmp_path: Path) -> Iterator[int]:
    code = tmp_path / "echo"  # the package `echo` in /var/task (CodeUri)
    code.mkdir()
    (code / "__init__.py").touch()
    (code / "app.py").write_text(textwrap.dedent(ECHO))
    template = tmp_path / "template.yaml"
    template.write_text(TEMPLATE.format(task_root=tmp_path))
    yield from serve(Gateway(template=template))


def serve(gateway: Gateway, *, read_timeout_s: float = READ_TIMEOUT_S) -> Iterator[int]:
    port = free_port()
    try:
        with serving(make_server(gateway, port=port, read_timeout_s=read_timeout_s)):
            yield port
    finally:
        gateway.close()


@pytest.fixture
def gateway() -> Iterator[int]:
    """The real template's gateway, with a short read timeout."""
    yield from serve(Gateway(), read_timeout_s=0.5)


def get(port: int, path: str, method: str = "GET", body: bytes = b"") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body or None)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def test_template_routes_reach_the_function_with_path_parameters(echo_gateway: int) -> None:
    status, body = get(echo_gateway, "/listings/42")
    assert status == 200
    assert body["resource"] == "/listings/{id}" and body["pathParameters"] == {"id": "42"}
    assert body["path"] == "/listings/42"
    _, body = get(echo_gateway, "/listings/new")
    assert body["resource"] == "/listings/new" and body["pathParameters"] is None
    _, body = get(echo_gateway, "/files/a/b.txt", method="PUT", body=b"data")
    assert body["resource"] == "/files/{proxy+}" and body["pathParameters"] == {"proxy": "a/b.txt"}
    assert body["httpMethod"] == "PUT" and body["body"] == "data"
    status, body = get(echo_gateway, "/listings")
    assert status == 404 and body["error"] == "not_found"


def json_error(result: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    got, headers, data = result
    assert got == status, data
    assert headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(data)
    return body


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", "1, 1", "", "+1", "\u00b2", "0x10"])
def test_a_malformed_content_length_is_400_json(gateway: int, length: str) -> None:
    raw = f"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode("latin-1")
    body = json_error(request(gateway, raw), 400)
    assert "Content-Length" in body["message"]


def test_two_content_lengths_are_400_json(gateway: int) -> None:
    raw = b"POST /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    json_error(request(gateway, raw), 400)


def test_a_short_body_is_400_after_the_read_timeout_not_a_hang(gateway: int) -> None:
    started = time.monotonic()
    raw = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
    body = json_error(request(gateway, raw), 400)
    assert "not received within 0.5s" in body["message"]
    assert time.monotonic() - started < 10  # the 0.5 s read timeout, with a generous margin


def test_a_body_beyond_the_limit_is_413_json(gateway: int) -> None:
    raw = f"POST /health HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    json_error(request(gateway, raw), 413)


def test_a_chunked_body_is_read_and_a_malformed_one_is_400(gateway: int) -> None:
    ok = b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert json_error(request(gateway, ok), 405)["error"] == "method_not_allowed"
    bad = b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    json_error(request(gateway, bad), 400)
    huge = f"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{MAX_BODY_BYTES + 1:x}\r\n"
    json_error(request(gateway, huge.encode()), 413)


@pytest.mark.parametrize("method", ["BREW", "PROPFIND", "TRACE", "CONNECT", "X" * 300])
def test_an_unknown_method_is_501_json(gateway: int, method: str) -> None:
    body = json_error(request(gateway, f"{method} /health HTTP/1.1\r\n\r\n".encode()), 501)
    assert len(body["message"]) <= 256


@pytest.mark.parametrize("length", [9_000, 70_000])
def test_a_long_url_is_414_json(gateway: int, length: int) -> None:
    raw = f"GET /{'a' * length} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    body = json_error(request(gateway, raw), 414)
    assert len(body["message"]) <= 256


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"GET /health HTTP/1.1 extra\r\n\r\n",
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n",
        b"GET /health HTTP/1.1\r\nX-Long: " + b"y" * 70_000 + b"\r\n\r\n",
    ],
)
def test_a_malformed_request_is_answered_with_json(gateway: int, raw: bytes) -> None:
    status, headers, data = request(gateway, raw)
    assert 400 <= status < 500 or status == 505
    assert headers["Content-Type"] == "application/json"
    assert json.loads(data)["message"]


def test_the_gateway_keeps_serving_after_malformed_requests(gateway: int) -> None:
    for raw in (b"garbage\r\n\r\n", b"POST /health HTTP/1.1\r\nContent-Length: abc\r\n\r\n"):
        request(gateway, raw)
    status, body = get(gateway, "/health/live")
    assert status == 200 and body["status"] == "ok"


# -- HEAD and OPTIONS: what the template declares reaches the function ------------------


def exchange(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; http.client reads no body for HEAD."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def db_gateway(database_url: str) -> Iterator[int]:
    """The real template's gateway on the test database, /metrics behind a token."""
    yield from serve(Gateway(env={"DATABASE_URL": database_url, "METRICS_AUTH_TOKEN": "t0ken"}))


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/health", {}), ("/health/live", {}), ("/metrics", {"Authorization": "Bearer t0ken"})],
)
def test_head_through_the_gateway_is_the_gets_status_and_headers_without_a_body(
    db_gateway: int, path: str, headers: dict[str, str]
) -> None:
    got_status, got_headers, got_body = exchange(db_gateway, "GET", path, headers)
    status, head_headers, body = exchange(db_gateway, "HEAD", path, headers)
    assert got_status == 200 and got_body
    assert (status, body) == (got_status, b"")
    assert head_headers["Content-Type"] == got_headers["Content-Type"]
    assert head_headers["Cache-Control"] == got_headers["Cache-Control"]
    status, _, body = exchange(db_gateway, "HEAD", "/metrics")  # no token: 401, no body
    assert (status, body) == (401, b"")


def test_options_through_the_gateway_lists_the_methods(db_gateway: int) -> None:
    status, headers, body = exchange(db_gateway, "OPTIONS", "/metrics")
    assert (status, headers["Allow"], body) == (204, "GET, HEAD, OPTIONS", b"")


def test_a_method_the_template_does_not_declare_is_answered_as_api_gateway_does(
    echo_gateway: int,
) -> None:
    """API Gateway's "Missing Authentication Token", which the template maps to a 404 JSON
    (GatewayResponses): what HEAD /health got in AWS before the routes declared `any`."""
    assert exchange(echo_gateway, "HEAD", "/listings/new")[0] == 404  # declared: get only
    status, _, body = exchange(echo_gateway, "POST", "/listings/new")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    assert exchange(echo_gateway, "HEAD", "/files/a.txt")[0] == 200  # declared: any


# -- a client that goes away early ------------------------------------------------------


def test_a_client_gone_before_the_answer_is_one_json_line_not_a_traceback(
    gateway: int, capfd: pytest.CaptureFixture[str]
) -> None:
    assert get(gateway, "/health/live")[0] == 200  # the worker is warm
    capfd.readouterr()
    with socket.create_connection(("127.0.0.1", gateway), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        # Close with a reset at once: the gateway's answer meets a dead socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline, err = time.monotonic() + 20, ""
    while time.monotonic() < deadline and "client_disconnected" not in err:
        time.sleep(0.05)
        err += capfd.readouterr().err
    # The function's own JSON lines pass through; nothing else may (no traceback).
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), err
    gateway_lines = [x for x in map(json.loads, lines) if x.get("type") == "gateway"]
    assert len(gateway_lines) == 1, err
    logged = gateway_lines[0]
    assert logged["event"] == "client_disconnected", logged
    assert logged["method"] == "GET" and logged["path"] == "/health/live", logged
    assert logged["error"] in ("BrokenPipeError", "ConnectionResetError"), logged
    assert get(gateway, "/health/live")[0] == 200  # and it keeps serving
