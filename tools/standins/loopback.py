"""A loopback server (a stand-in dependency, the local gateway) served on a daemon thread
for as long as a `with` block lasts, then shut down and its socket closed; and the HTTP
ingest endpoint the stand-ins for outside collectors (OTLP, Sentry) are built on."""

from __future__ import annotations

import gzip
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

S = TypeVar("S", bound=socketserver.BaseServer)
T = TypeVar("T")
U = TypeVar("U")
# (path, headers, body) -> (status, content type, body)
OnPost = Callable[[str, dict[str, str], bytes], tuple[int, str, bytes]]


@contextmanager
def serving(server: S) -> Iterator[S]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def ingest_endpoint(on_post: OnPost) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 handing every POST (its gzip content encoding undone) to
    `on_post` and answering what it returns; yields the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            status, content_type, reply = on_post(self.path, dict(self.headers), body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass  # the stand-in's owner prints what arrived

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield server.server_address[1]


@dataclass
class Received(Generic[T]):
    """What a stand-in's ingest endpoint was sent, in arrival order: appended by its server
    thread, read by the test or tool that started it."""

    port: int
    _items: list[T] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def received(self) -> list[T]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def wait_until(self, count: int, view: Callable[[], list[U]], timeout_s: float) -> list[U]:
        """`view()` once it holds `count` entries, or as it is when `timeout_s` is up."""
        deadline = time.monotonic() + timeout_s
        while len(seen := view()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return seen
