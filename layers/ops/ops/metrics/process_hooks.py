"""The flushes the process asks for, not an invocation: at shutdown, before a deadline,
and when idle (the router's hooks, ops.metrics.router_hooks, ask for the others).

* Shutdown: SIGTERM, SIGINT and normal interpreter exit flush everything pending
  within SHUTDOWN_BUDGET_S, then the previous handler runs (or the process dies of
  the signal as it would have). Lambda sends SIGTERM to the function process only
  once an extension is registered, so on Lambda an internal extension with no
  events is registered at init (ops.extensions_api). Lambda allows the runtime
  300 ms (500 ms with an internal extension) before SIGKILL.
* Whichever thread the runtime client polls on: awslambdaric waits for the next
  invocation on the main thread, inside its C extension, unless AWS_EXECUTION_ENV
  names a runtime it lists for thread polling (python3.12+ in 4.2.2). A Python signal
  handler runs only when the main thread returns to Python, which it never does
  there. So the signal is also taken through `signal.set_wakeup_fd`: CPython's C
  handler writes the signal number to a pipe from whichever thread receives it,
  and a watcher thread starts the flush at once. The Python handler, if the main
  thread runs it, joins that flush and then runs the previous handler (or dies of
  the signal). If it has not started once the flush is over (plus SIGNAL_GRACE_S),
  the main thread is stuck in C: the watcher ends the process with status 0.
  (Blocking the signal and `sigwait`ing for it instead would be inherited by every
  child process, and a thread started before install would still die of it unflushed.)
  A process whose wakeup fd another library holds (an asyncio loop's signal
  handlers) keeps the Python handler only, and says so in the log.
* Deadline: during an invocation, once less than 2 x METRICS_FLUSH_TIMEOUT_MS
  remains, the invocation's pending deltas are handed to the flush thread (the
  ContainerMetrics the invocation began with), so a timeout loses nothing recorded
  before it.
* Idle (long-lived local processes only: gateway workers): deltas older than
  max(METRICS_FLUSH_INTERVAL_S, 1 s) are flushed without waiting for more traffic.
  A Lambda container is frozen between invocations; its next invocation, or the
  shutdown flush, takes them.

Shutdown and idle flushes are the process's default ContainerMetrics'; an identity
hosted next to it (ops.metrics.using) flushes its own with FlushReason.SHUTDOWN.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import Any

from ops import deadline, extensions_api
from ops.concurrency import MailboxThread, start_daemon
from ops.config import settings
from ops.log import logger
from ops.metrics.container import (
    SHUTDOWN_BUDGET_S,
    ContainerMetrics,
    FlushReason,
    current,
    default,
)

# ContainerMetrics.flush loads the store, the database driver and Powertools Metrics on
# first use, never at init (cold start).
SIGNAL_GRACE_S = 0.05  # after the flush, for a main thread that can run Python to take over
IDLE_MIN_S = 1.0
EXTENSION_NAME = "ops-metrics-shutdown-flush"

_installed = False
_previous: dict[int, Any] = {}
_watch: _Watch | None = None
_signal_pipe: tuple[int, int] | None = None  # (read, write) of the wakeup fd; ours
_handler_ran = threading.Event()  # the main thread reached _on_signal
_running: _Shutdown | None = None  # the shutdown flush in progress: later callers join it
_running_lock = threading.Lock()
_shutdown_hooks: list[Callable[[], None]] = []  # before the flush (ops.wiring: log summary)


def at_shutdown(hook: Callable[[], None]) -> None:
    """Run `hook` at shutdown, before the flush (it must be quick and never block)."""
    _shutdown_hooks.append(hook)


def deadline_margin_s() -> float:
    return 2 * settings().metrics_flush_timeout_ms / 1000.0


class _Shutdown:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.stored = False

    def run(self) -> None:
        try:
            for hook in _shutdown_hooks:
                with suppress(Exception):  # the flush goes on whatever a hook does
                    hook()
            self.stored = default().flush(FlushReason.SHUTDOWN, budget_s=SHUTDOWN_BUDGET_S)
        except Exception as exc:
            logger.warning(
                "metrics shutdown flush failed", extra={"type": "metrics_flush", "error": repr(exc)}
            )
        finally:
            self.done.set()


class _Watch:
    """The running invocation's deadline, idle deltas (locally), and the shutdown flush,
    on one MailboxThread; the shutdown flush runs there because at interpreter exit no
    new thread may start."""

    def __init__(self, idle_flush: bool) -> None:
        self.idle_flush = idle_flush
        self.busy = False
        self.deadline: float | None = None  # monotonic; None: none known, or already acted on
        self.invocation: ContainerMetrics | None = None  # whose invocation runs (its deadline)
        self.thread = MailboxThread("metrics-watch", self._handle)

    def _handle(self, message: tuple[str, Any]) -> float | None:
        kind, value = message
        try:
            if kind == "begin":
                self.busy, (self.deadline, self.invocation) = True, value
            elif kind == "end":
                self.busy, self.deadline, self.invocation = False, None, None
            elif kind == "shutdown":
                value.run()
            return self._wake_at(time.monotonic())
        except Exception as exc:  # keep watching
            logger.warning(
                "metrics deadline or idle flush failed",
                extra={"type": "metrics_flush", "error": repr(exc)},
            )
            return time.monotonic() + IDLE_MIN_S

    def _wake_at(self, now: float) -> float | None:
        """What is due now is done; returns when to look again (None: on the next message)."""
        if self.busy:
            if self.deadline is None:
                return None
            at = self.deadline - deadline_margin_s()
            if now < at:
                return at
            self.deadline = None  # once per invocation
            if self.invocation is not None:
                self.invocation.flush(FlushReason.DEADLINE)
            return None
        if not self.idle_flush:
            return None
        period = max(settings().metrics_flush_interval_s, IDLE_MIN_S)
        idle = default()
        since = idle.pending_since()
        if since is not None and now - since >= period:
            idle.flush(FlushReason.IDLE)
            since = None
        return (since if since is not None else now) + period


def begin_invocation(context: Any) -> None:
    """Watch this invocation's deadline (from context.get_remaining_time_in_millis)."""
    if _watch is not None:
        _watch.thread.post(("begin", (deadline.from_context(context), current())))


def end_invocation() -> None:
    if _watch is not None:
        _watch.thread.post(("end", None))


def flush_at_shutdown() -> bool:
    """Flush everything pending within SHUTDOWN_BUDGET_S; never raises, never hangs.

    The work runs on the watch's thread: called from a signal handler, the main
    thread may hold a lock the flush needs, and then the wait simply times out.
    A call while another caller's flush runs (the signal watcher and the Python
    handler, for one signal) waits for that flush instead of starting a second.
    """
    global _running
    with _running_lock:
        job, joined = (_running, True) if _running is not None else (_Shutdown(), False)
        _running = job
    try:
        if joined:
            pass
        elif _watch is not None and _watch.thread.is_alive():
            _watch.thread.post(("shutdown", job))
        else:
            job.run()
        job.done.wait(SHUTDOWN_BUDGET_S + 0.05)
    finally:
        with _running_lock:
            if _running is job and job.done.is_set():
                _running = None
    return job.stored


def _watch_signals(read_fd: int) -> None:
    """The wakeup fd's reader: flush on SIGTERM/SIGINT even while the main thread is
    inside C code, then end the process if the main thread cannot (see the docstring)."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signal.getsignal(signum) is _on_signal:
                _after_signal(signum)


def _after_signal(signum: int) -> None:
    started = time.monotonic()
    stored = flush_at_shutdown()
    if _handler_ran.wait(SIGNAL_GRACE_S):
        _handler_ran.clear()  # a later signal (after a handled SIGINT) is watched afresh
        return  # the main thread runs Python: it runs the previous handler too
    logger.info(
        "shutdown flush done; the main thread is inside C code (the runtime client's poll):"
        " exiting",
        extra={
            "type": "metrics_flush",
            "status": "exit",
            "signal": signal.Signals(signum).name,
            "stored": stored,
            "durationMs": round((time.monotonic() - started) * 1000, 1),
        },
    )
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(0)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _handler_ran.set()
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
    if _previous and _signal_pipe is None:
        _install_signal_watcher()


def _install_signal_watcher() -> None:
    global _signal_pipe
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block
    try:
        old = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:
        old = None
    if old != -1:
        if old is not None:
            signal.set_wakeup_fd(old)  # another library's (an asyncio loop): left to it
        os.close(read_fd)
        os.close(write_fd)
        logger.warning(
            "the signal wakeup fd is in use: the shutdown flush runs only when the main"
            " thread can run Python (not while it waits inside C code)",
            extra={"type": "metrics_flush"},
        )
        return
    _signal_pipe = (read_fd, write_fd)
    _start_signal_watcher(read_fd)


def _start_signal_watcher(read_fd: int) -> None:
    start_daemon("metrics-signals", _watch_signals, read_fd)


def _signal_pipe_of_own_after_fork() -> None:
    """A forked child shares the parent's pipe: its signals would wake the parent's
    watcher. The wakeup fd's number is pointed at a new pipe that a new thread watches."""
    global _signal_pipe, _running
    _running = None
    _handler_ran.clear()
    if _signal_pipe is None:
        return
    old_read, write_fd = _signal_pipe
    read_fd, new_write = os.pipe()
    os.set_blocking(new_write, False)
    os.dup2(new_write, write_fd, inheritable=False)  # the number the C handler writes to
    os.close(new_write)
    os.close(old_read)
    _signal_pipe = (read_fd, write_fd)
    _start_signal_watcher(read_fd)


os.register_at_fork(after_in_child=_signal_pipe_of_own_after_fork)


def install(*, idle_flush: bool = False) -> None:
    """Once per process, at init: shutdown flush (signals, exit), the Lambda extension,
    the deadline watch; `idle_flush` for long-lived local processes. Never raises."""
    global _installed, _watch
    if _installed:
        if idle_flush and _watch is not None and not _watch.idle_flush:
            _watch.idle_flush = True
            _watch.thread.post(("idle", None))  # looks at the idle deltas now
        return
    _installed = True
    try:
        api = settings().lambda_runtime_api
        if api:
            extensions_api.register_without_events(api, EXTENSION_NAME)
    except Exception as exc:  # never fail init: only the SIGTERM flush is lost
        logger.warning(
            "could not register the shutdown-flush extension: no flush on SIGTERM",
            extra={"type": "metrics_flush", "error": repr(exc)},
        )
    try:
        _watch = _Watch(idle_flush)
        atexit.register(flush_at_shutdown)
        _install_signal_handlers()
    except Exception as exc:
        logger.warning(
            "could not install the shutdown flush",
            extra={"type": "metrics_flush", "error": repr(exc)},
        )
