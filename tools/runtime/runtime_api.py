"""A loopback stand-in of Lambda's Runtime API and Extensions API, as a runtime client
(awslambdaric) and an internal extension see them:

* POST /2020-01-01/extension/register, GET /2020-01-01/extension/event/next (an extension
  that asked for no events is never answered);
* GET /2018-06-01/runtime/invocation/next with Lambda's headers (request id, deadline,
  function ARN, trace id), POST .../invocation/{id}/response and .../error, and
  POST /2018-06-01/runtime/init/error.

`register_status` (an HTTP status, or None: never answered) makes registration fail as
a broken or hung Runtime API would. Used by tools.runtime.ric, the shutdown tests and benchmark.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from queue import Empty, SimpleQueue
from typing import Any

EXTENSION_ID = "ext-0001"
RUNTIME = "/2018-06-01/runtime"
EXTENSION = "/2020-01-01/extension"
POLL_S = 0.2  # how often a held long poll looks whether the stand-in is closing


@dataclass
class Invocation:
    event: Any
    deadline_ms: int  # epoch milliseconds, as Lambda sends it
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    answered: threading.Event = field(default_factory=threading.Event)
    outcome: str | None = None  # "response" or "error"
    body: Any = None
    answered_at: float | None = None  # monotonic
    answered_wall_ms: int = 0  # epoch milliseconds, to compare with deadline_ms

    def headers(self, function_name: str) -> dict[str, str]:
        return {
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": (
                f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
            ),
            "Lambda-Runtime-Trace-Id": (
                f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent="
                f"{uuid.uuid4().hex[:16]};Sampled=0"
            ),
            "Content-Type": "application/json",
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a function killed mid-reply
            super().handle_error(request, client_address)


class RuntimeApiStandIn:
    """One function's Runtime API on a free loopback port; `address` is host:port."""

    def __init__(self, function_name: str = "function", register_status: int | None = 200) -> None:
        self.function_name = function_name
        self.register_status = register_status
        self.registrations: list[tuple[dict[str, str], Any]] = []
        self.next_calls: list[dict[str, str]] = []  # the extension's event/next
        self.init_errors: list[tuple[dict[str, str], Any]] = []
        self.first_poll_at: float | None = None  # monotonic: the runtime's first next call
        self.polled = threading.Event()
        self._queue: SimpleQueue[Invocation] = SimpleQueue()
        self._open: dict[str, Invocation] = {}
        self._stop = threading.Event()
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the runtime client keeps its connection
            # Headers and body go in separate writes: without TCP_NODELAY, Nagle and the
            # client's delayed ACK would hold each body back ~40 ms (not Lambda's behaviour).
            disable_nagle_algorithm = True

            def _body(self) -> Any:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode("utf-8", "replace")

            def _reply(self, status: int, body: bytes = b"{}", **headers: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self._body()
                path = self.path
                if path == f"{EXTENSION}/register":
                    outer.registrations.append((dict(self.headers), body))
                    outer._hold_registration(self)
                elif path == f"{RUNTIME}/init/error":
                    outer.init_errors.append((dict(self.headers), body))
                    self._reply(202)
                elif path.startswith(f"{RUNTIME}/invocation/"):
                    request_id, _, kind = path.removeprefix(f"{RUNTIME}/invocation/").partition("/")
                    invocation = outer._open.pop(request_id, None)
                    if invocation is None or kind not in ("response", "error"):
                        self._reply(400, b'{"errorType":"InvalidRequestID"}')
                        return
                    invocation.outcome, invocation.body = kind, body
                    invocation.answered_at = time.monotonic()
                    invocation.answered_wall_ms = int(time.time() * 1000)
                    invocation.answered.set()
                    self._reply(202)
                else:
                    self._reply(404)

            def do_GET(self) -> None:
                if self.path == f"{EXTENSION}/event/next":
                    outer.next_calls.append(dict(self.headers))
                    outer._stop.wait()  # no events were asked for: none ever comes
                elif self.path == f"{RUNTIME}/invocation/next":
                    outer._next_invocation(self)
                else:
                    self._reply(404)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def _hold_registration(self, handler: Any) -> None:
        if self.register_status is None:
            self._stop.wait()  # a Runtime API that never answers
            return
        if self.register_status != 200:
            handler._reply(self.register_status, b'{"errorType":"Extension.Unknown"}')
            return
        handler._reply(
            200,
            b"{}",
            **{"Lambda-Extension-Identifier": EXTENSION_ID, "Content-Type": "application/json"},
        )

    def _next_invocation(self, handler: Any) -> None:
        if self.first_poll_at is None:
            self.first_poll_at = time.monotonic()
        self.polled.set()
        while not self._stop.is_set():
            try:
                invocation = self._queue.get(timeout=POLL_S)
            except Empty:
                continue
            self._open[invocation.request_id] = invocation
            body = json.dumps(invocation.event).encode()
            handler._reply(200, body, **invocation.headers(self.function_name))
            return

    def submit(self, event: Any, timeout_s: float) -> Invocation:
        """Queue an invocation whose deadline is `timeout_s` from now."""
        invocation = Invocation(event, int((time.time() + timeout_s) * 1000))
        self._queue.put(invocation)
        return invocation

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
