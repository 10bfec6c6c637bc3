"""A local API Gateway on 127.0.0.1: routes from template.yaml, real handlers behind it.

Each function runs in its own worker process (a warm "container"), one request at
a time, like Lambda. A handler that exceeds the function's Timeout is killed and
the caller gets API Gateway's 504.

At its edges it behaves like API Gateway: `{param}` and `{proxy+}` templates route
as API Gateway routes them (with `pathParameters`), a method the template does not
declare for a route (nor `any`) is the template's 404 for API Gateway's "Missing
Authentication Token", as an unknown path is, request bodies are bounded and
read with a timeout, and whatever is malformed (request line, Content-Length,
method, a URL or body too long) gets a JSON 400/413/414/501, never a hang, an HTML
page or a dropped connection.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import select
import subprocess
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.runtime.apigw import proxy_event, resolve
from tools.runtime.template import FunctionSpec, functions, load_template
from tools.runtime.worker import spawn

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_URL_CHARS = 8192  # longer request targets are 414, like API Gateway's
READ_TIMEOUT_S = 10.0  # a client that stops sending mid-request gets a 400, not a held thread
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")  # API Gateway's


class Worker:
    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.spec = spec
        self.env = env
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        return spawn(self.spec, {**self.env, "AWS_LAMBDA_FUNCTION_NAME": self.spec.logical_id})

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(
                json.dumps({"event": event, "timeout_s": self.spec.timeout_s}) + "\n"
            )
            self.proc.stdin.flush()
            # Import time counts against the first invocation, as a cold start does on Lambda.
            ready, _, _ = select.select([self.proc.stdout], [], [], self.spec.timeout_s + 5)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.stop()
                return {"ok": False, "timeout": bool(not ready), "errorMessage": "worker died"}
            reply: dict[str, Any] = json.loads(line)
            return reply

    def stop(self, *, graceful: bool = True) -> None:
        """End the worker as Lambda ends a container: SIGTERM (it flushes its metrics
        within 250 ms), SIGKILL if it has not exited within a second."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if graceful:
            proc.terminate()
            try:
                proc.wait(1)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait(5)


class Gateway:
    def __init__(
        self, env: dict[str, str] | None = None, stage: str = "local", template: Path | None = None
    ) -> None:
        self.stage = stage
        self.workers: dict[str, Worker] = {}
        self.routes: dict[str, dict[str, Worker]] = {}
        specs = functions(load_template(template) if template else None)
        for spec in specs.values():
            worker = Worker(spec, env or {})
            self.workers[spec.logical_id] = worker
            for route in spec.routes:
                self.routes.setdefault(route.path, {})[route.method] = worker

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        matched = resolve(self.routes, parts.path)
        methods = self.routes[matched[0]] if matched else {}
        worker = methods.get(method) or methods.get("ANY")
        if matched is None or worker is None:
            # No such route, or a method the template does not declare for it: API Gateway's
            # MISSING_AUTHENTICATION_TOKEN, which the template answers with this 404.
            shown = parts.path if len(parts.path) <= 256 else parts.path[:256] + "…"
            return _json(404, {"error": "not_found", "message": f"no route for {shown}"})
        resource, path_parameters = matched
        event = proxy_event(
            method=method,
            path=parts.path,
            resource=resource,
            query=parts.query,
            headers=headers,
            body=body,
            stage=self.stage,
            path_parameters=path_parameters,
        )
        reply = worker.invoke(event)
        if not reply.get("ok"):
            if reply.get("timeout"):
                return _json(504, {"message": "Endpoint request timed out"})
            print(json.dumps({"type": "gateway", **reply}), file=sys.stderr)
            return _json(502, {"message": "Internal server error"})
        result = reply["result"]
        try:
            status = int(result["statusCode"])
            out_headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
            payload = result.get("body") or ""
            data = (
                base64.b64decode(payload)
                if result.get("isBase64Encoded")
                else str(payload).encode()
            )
        except (KeyError, TypeError, ValueError):
            return _json(502, {"message": "Internal server error"})
        return status, out_headers, data

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()


def _json(status: int, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _content_length(value: str | None) -> int:
    if value is None:
        return 0
    if not re.fullmatch(r"[0-9]+", value.strip()):  # "abc", "-1", "1, 2", "²": not a length
        raise _BadRequest(400, "Content-Length must be a non-negative whole number")
    length = int(value)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    return length


def make_server(
    gateway: Gateway,
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # An unparsable request line leaves this version in place: answer it with a status
        # line and headers (http.server's HTTP/0.9 default would send the bare body).
        default_request_version = "HTTP/1.1"
        timeout = read_timeout_s  # every read on the socket, request line and body alike

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._read_chunked()
            if len(self.headers.get_all("Content-Length") or []) > 1:
                raise _BadRequest(400, "more than one Content-Length header")
            length = _content_length(self.headers.get("Content-Length"))
            body = self.rfile.read(length) if length else b""
            if len(body) < length:
                raise _BadRequest(400, "request body is shorter than its Content-Length")
            return body

        def _read_chunked(self) -> bytes:
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _BadRequest(400, "malformed chunked body") from None
                if size < 0 or len(body) + size > MAX_BODY_BYTES:
                    raise _BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                chunk = self.rfile.read(size + 2)
                if len(chunk) < size + 2:
                    raise _BadRequest(400, "request body is shorter than its chunks")
                body += chunk[:size]

        def _serve(self) -> None:
            try:
                if len(self.path) > MAX_URL_CHARS:
                    raise _BadRequest(414, f"the URL is longer than {MAX_URL_CHARS} characters")
                body = self._read_body()
            except _BadRequest as exc:
                self.send_error(exc.status, str(exc))
                return
            except TimeoutError:
                self.send_error(400, f"request body not received within {read_timeout_s:g}s")
                return
            try:
                status, headers, data = gateway.handle(
                    self.command, self.path, {k: v for k, v in self.headers.items()}, body
                )
            except Exception:  # a gateway bug: API Gateway's 502, the traceback to the terminal
                traceback.print_exc()
                status, headers, data = _json(502, {"message": "Internal server error"})
            self._reply(status, headers, data)

        def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """Every error the server itself answers (bad request line, unknown method, URL
            or headers too long) as JSON, and the connection closed: what follows is unsound."""
            self.close_connection = True
            try:
                reason = HTTPStatus(code).phrase
            except ValueError:
                reason = "Error"
            error = re.sub(
                r"[^a-z]+", "_", reason.lower()
            )  # "Request-URI Too Long": request_uri_too_long
            _, headers, data = _json(code, {"error": error, "message": (message or reason)[:256]})
            headers["Connection"] = "close"
            with contextlib.suppress(OSError):  # the client may be gone already
                self._reply(code, headers, data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        def handle(self) -> None:
            """A client that went away before its answer (a timed-out probe, a closed tab)
            is one JSON line, not socketserver's traceback in the log stream."""
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close_connection = True
                path = urlsplit(getattr(self, "path", "") or "").path
                gone = {
                    "type": "gateway",
                    "event": "client_disconnected",
                    "method": getattr(self, "command", None),
                    "path": path if len(path) <= 256 else path[:256] + "…",
                    "error": type(exc).__name__,
                }
                print(json.dumps(gone), file=sys.stderr, flush=True)

        def log_message(self, fmt: str, *args: Any) -> None:  # the handlers log each request
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
