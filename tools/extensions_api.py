"""A stand-in for Lambda's Runtime API, as far as an internal extension sees it: the
registration (POST /2020-01-01/extension/register) and the long poll for the next event
(GET /2020-01-01/extension/event/next), which never answers when no event was asked for.
On loopback, a free port; used by the shutdown-flush tests and benchmark."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXTENSION_ID = "ext-0001"


class RuntimeApiStandIn:
    """Records registrations and next-event calls; `address` is host:port."""

    def __init__(self) -> None:
        self.registrations: list[tuple[dict[str, str], Any]] = []
        self.next_calls: list[dict[str, str]] = []
        stop = self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/2020-01-01/extension/register":
                    self.send_error(404)
                    return
                outer.registrations.append((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.send_header("Lambda-Extension-Identifier", EXTENSION_ID)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_GET(self) -> None:
                if self.path != "/2020-01-01/extension/event/next":
                    self.send_error(404)
                    return
                outer.next_calls.append(dict(self.headers))
                stop.wait(30)  # no events were asked for: none ever comes

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
