"""The flushes no invocation asks for: at shutdown, before a deadline, and when idle.

* Shutdown: SIGTERM, SIGINT and normal interpreter exit flush everything pending
  within SHUTDOWN_BUDGET_S, then the previous handler runs (or the process dies of
  the signal as it would have). Lambda sends SIGTERM to the function process only
  once an extension is registered, so on Lambda an internal extension with no
  events is registered at init (a few hundred microseconds; its thread then waits
  for an event that never comes). Lambda allows the runtime 300 ms (500 ms with an
  internal extension) before SIGKILL.
* Deadline: during an invocation, once less than 2 x METRICS_FLUSH_TIMEOUT_MS
  remains, pending deltas are handed to the courier, so a timeout loses nothing
  recorded before it.
* Idle (long-lived local processes only: gateway workers): deltas older than
  max(METRICS_FLUSH_INTERVAL_S, 1 s) are flushed without waiting for more traffic.
  A Lambda container is frozen between invocations; its next invocation, or the
  shutdown flush, takes them.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import threading
import time
from queue import Empty, SimpleQueue
from types import FrameType
from typing import Any

from ops.config import settings
from ops.log import logger

# ops.metrics.flushing and the store import the database driver and Powertools Metrics: they
# load on first use, never at init (cold start).

SHUTDOWN_BUDGET_S = 0.25
IDLE_MIN_S = 1.0
EXTENSION_NAME = "ops-metrics-shutdown-flush"
EXTENSION_API = "/2020-01-01/extension"
REGISTER_TIMEOUT_S = 0.5

_installed = False
_previous: dict[int, Any] = {}
_watchdog: _Watchdog | None = None


def deadline_margin_s() -> float:
    return 2 * settings().metrics_flush_timeout_ms / 1000.0


def _hand_over() -> None:
    from ops.metrics import flushing

    flushing.hand_over()


def _pending_since() -> float | None:
    from ops.metrics import flushing

    return flushing.pending_since()


def _flush_before_exit(budget_s: float) -> bool:
    from ops.metrics import flushing

    return flushing.flush_before_exit(budget_s)


class _Shutdown:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.stored = False

    def run(self) -> None:
        try:
            self.stored = _flush_before_exit(SHUTDOWN_BUDGET_S)
        except Exception as exc:
            logger.warning(
                "metrics shutdown flush failed", extra={"type": "metrics_flush", "error": repr(exc)}
            )
        finally:
            self.done.set()


class _Watchdog:
    """One thread, fed through a queue (SimpleQueue.put is safe in a signal handler):
    the running invocation's deadline, idle deltas (locally), and the shutdown flush,
    which runs here because at interpreter exit no new thread may start."""

    def __init__(self, idle_flush: bool) -> None:
        self.idle_flush = idle_flush
        self.inbox: SimpleQueue[tuple[str, Any]] = SimpleQueue()
        self.busy = False
        self.deadline: float | None = None  # monotonic; None: none known, or already acted on
        self.thread = threading.Thread(target=self._run, name="metrics-lifecycle", daemon=True)
        self.thread.start()

    def _wake_at(self, now: float) -> float | None:
        """What is due now is done; returns when to look again (None: on the next message)."""
        if self.busy:
            if self.deadline is None:
                return None
            at = self.deadline - deadline_margin_s()
            if now < at:
                return at
            self.deadline = None  # once per invocation
            _hand_over()
            return None
        if not self.idle_flush:
            return None
        period = max(settings().metrics_flush_interval_s, IDLE_MIN_S)
        since = _pending_since()
        if since is not None and now - since >= period:
            _hand_over()
            since = None
        return (since if since is not None else now) + period

    def _run(self) -> None:
        wake: float | None = None
        while True:
            try:
                timeout = None if wake is None else max(0.0, wake - time.monotonic())
                kind, value = self.inbox.get(timeout=timeout)
            except Empty:
                kind, value = "tick", None
            try:
                if kind == "begin":
                    self.busy, self.deadline = True, value
                elif kind == "end":
                    self.busy, self.deadline = False, None
                elif kind == "shutdown":
                    value.run()
                wake = self._wake_at(time.monotonic())
            except Exception as exc:  # keep watching
                wake = time.monotonic() + IDLE_MIN_S
                logger.warning(
                    "metrics lifecycle flush failed",
                    extra={"type": "metrics_flush", "error": repr(exc)},
                )


def begin_invocation(context: Any) -> None:
    """Watch this invocation's deadline (from context.get_remaining_time_in_millis)."""
    if _watchdog is None:
        return
    deadline = None
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        try:
            deadline = time.monotonic() + float(remaining()) / 1000.0
        except (TypeError, ValueError):
            deadline = None
    _watchdog.inbox.put(("begin", deadline))


def end_invocation() -> None:
    if _watchdog is not None:
        _watchdog.inbox.put(("end", None))


def flush_at_shutdown() -> bool:
    """Flush everything pending within SHUTDOWN_BUDGET_S; never raises, never hangs.

    The work runs on the watchdog thread: called from a signal handler, the main
    thread may hold a lock the flush needs, and then the wait simply times out.
    """
    job = _Shutdown()
    if _watchdog is not None and _watchdog.thread.is_alive():
        _watchdog.inbox.put(("shutdown", job))
        job.done.wait(SHUTDOWN_BUDGET_S + 0.05)
    else:
        job.run()
    return job.stored


def _on_signal(signum: int, frame: FrameType | None) -> None:
    flush_at_shutdown()
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default action: die of the signal, as the process would have without us.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may; the atexit flush still applies
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN or current is _on_signal:
            continue  # an ignored signal stays ignored (gateway workers ignore Ctrl-C)
        _previous[signum] = current
        signal.signal(signum, _on_signal)


def _request(
    api: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> socket.socket:
    host, _, port = api.rpartition(":")
    sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=REGISTER_TIMEOUT_S)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: {api}\r\n{head}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    return sock


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def register_extension(api: str) -> str | None:
    """Register an internal extension with no events; returns its identifier.

    Plain sockets (http.client costs ~14 ms of imports at cold start). Lambda ends
    the Init phase only when every registered extension has asked for its next
    event, so a daemon thread asks and then waits forever: no event is ever sent.
    """
    sock = _request(
        api,
        "POST",
        f"{EXTENSION_API}/register",
        {"Lambda-Extension-Name": EXTENSION_NAME, "Content-Type": "application/json"},
        b'{"events":[]}',
    )
    with sock:
        status, headers = _read_head(sock)
    identifier = headers.get("lambda-extension-identifier")
    if status != 200 or not identifier:
        raise OSError(f"extension registration answered HTTP {status}")

    def wait_forever() -> None:
        try:
            headers = {"Lambda-Extension-Identifier": identifier}
            with _request(api, "GET", f"{EXTENSION_API}/event/next", headers, b"") as conn:
                conn.settimeout(None)
                while conn.recv(4096):
                    pass
        except OSError:
            pass

    threading.Thread(target=wait_forever, name="metrics-extension", daemon=True).start()
    return identifier


def install(*, idle_flush: bool = False) -> None:
    """Once per process, at init: shutdown flush (signals, exit), the Lambda extension,
    the deadline watch; `idle_flush` for long-lived local processes. Never raises."""
    global _installed, _watchdog
    if _installed:
        if idle_flush and _watchdog is not None and not _watchdog.idle_flush:
            _watchdog.idle_flush = True
            _watchdog.inbox.put(("tick", None))
        return
    _installed = True
    try:
        api = settings().lambda_runtime_api
        if api:
            register_extension(api)
    except Exception as exc:  # never fail init: only the SIGTERM flush is lost
        logger.warning(
            "could not register the shutdown-flush extension: no flush on SIGTERM",
            extra={"type": "metrics_flush", "error": repr(exc)},
        )
    try:
        _watchdog = _Watchdog(idle_flush)
        atexit.register(flush_at_shutdown)
        _install_signal_handlers()
    except Exception as exc:
        logger.warning(
            "could not install the shutdown flush",
            extra={"type": "metrics_flush", "error": repr(exc)},
        )
