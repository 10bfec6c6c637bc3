"""A loopback TCP proxy in front of a database, for the network's bad days:

* `delay_s`: every chunk is delivered that long after it arrived, in each direction
  (a round trip costs twice it; chunks in flight overlap, as on a long link);
* `vanish()`: the connections open now go silent in both directions, their packets
  dropped without a FIN or RST (a NAT or proxy idle timeout); new connections work;
* `refuse_new()`: new connections are refused; `close()`: and the open ones closed.

Used by the runtime-client tests (tests/metrics/test_runtime_client.py).
"""

from __future__ import annotations

import heapq
import itertools
import select
import socket
import threading
import time
from contextlib import suppress


class _Pipe:
    """One accepted connection and its upstream one."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.ends = (client, upstream)
        self.silent = False

    def close(self) -> None:
        for end in self.ends:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)  # the FIN goes now, even while polled
            with suppress(OSError):
                end.close()


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], delay_s: float = 0.0) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._pipes: list[_Pipe] = []
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, socket.socket, bytes, _Pipe]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        for target in (self._accept, self._deliver):
            threading.Thread(target=target, daemon=True).start()

    def url(self, database_url: str) -> str:
        """`database_url` with its host:port replaced by the proxy's."""
        host, port = self.upstream
        return database_url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")

    def refuse_new(self) -> None:
        """Connections from here on are refused (the listener closed)."""
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept; close() alone does not
        with suppress(OSError):
            self.listener.close()

    def vanish(self) -> None:
        """The connections open now drop every packet from here on, silently."""
        with self._lock:
            for pipe in self._pipes:
                pipe.silent = True

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            pipe = _Pipe(client, upstream)
            with self._lock:
                self._pipes.append(pipe)
            threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: _Pipe) -> None:
        client, upstream = pipe.ends
        peer = {client: upstream, upstream: client}
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        if not pipe.silent:
                            self._schedule(peer[end], b"", pipe)  # pass the FIN on, in order
                        return
                    if not pipe.silent:
                        self._schedule(peer[end], data, pipe)
            except OSError:
                return

    def _schedule(self, to: socket.socket, data: bytes, pipe: _Pipe) -> None:
        with self._wake:
            item = (time.monotonic() + self.delay_s, next(self._seq), to, data, pipe)
            heapq.heappush(self._due, item)
            self._wake.notify()

    def _deliver(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = 0.2 if not self._due else self._due[0][0] - time.monotonic()
                    self._wake.wait(max(0.0, min(timeout, 0.2)))
                    if self._stop.is_set():
                        return
                _, _, to, data, pipe = heapq.heappop(self._due)
            if pipe.silent:
                continue
            try:
                if data:
                    to.sendall(data)
                else:
                    to.shutdown(socket.SHUT_WR)
            except OSError:
                pipe.close()

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self.refuse_new()
        with self._lock:
            for pipe in self._pipes:
                pipe.close()
