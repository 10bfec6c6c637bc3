"""The threads the layer hands work to, and how callers wait for them: one vocabulary.

    run_on_worker  a pooled worker (a daemon thread, reused) runs one task
                   (the dependency checks, the scrape's store read)
    BoundedCall    a function on a worker that its caller waits on for at most a budget
    ChainedCall    a function run on a BoundedCall's worker right after it: a caller that
                   needs both (the scrape: database check, then store read) pays one
                   hand-off to a worker, not two
    SerialThread   a daemon thread of its own running jobs one at a time, in order (the
                   metrics flush: the caller may stop waiting, the job still finishes)
    MailboxThread  a daemon thread of its own fed through a queue (`post` is safe in a
                   signal handler) that also wakes at a time its handler names (the metrics
                   deadline, idle and shutdown flushes)
    start_daemon   a daemon thread for a loop that blocks (a signal pipe's reader, the
                   Lambda extension's wait for an event)

Pooled workers, not a new thread per task: `Thread.start()` creates the thread and then
waits until it runs, one more trip through the scheduler, which cost a warm `/health`
more than its query (profile in benchmarks/README.md). A worker stuck on a hung
dependency is simply not idle: the next task takes another idle worker, or a new one,
never a place in a queue behind it. At most MAX_IDLE_WORKERS stay.

Daemon threads throughout, not concurrent.futures: a ThreadPoolExecutor joins its
workers at interpreter exit, so a check hung on a dependency would hold the end of the
process (a Lambda shutdown, a `make run` Ctrl-C) for the whole hang (measured:
benchmarks/README.md, suite libraries).

A BoundedCall runs in a copy of its caller's context (contextvars): its spans stay in
the invocation's trace, its recordings go to the caller's ContainerMetrics.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, Protocol

MAX_IDLE_WORKERS = 4  # a request runs one task per check; a few spare cover a hung one or two

Task = Callable[[], None]  # must not raise


def start_daemon(name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


# -- pooled workers ------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self._tasks: SimpleQueue[tuple[Task, Task]] = SimpleQueue()
        start_daemon("ops-worker", self._serve)

    def give(self, work: Task, finished: Task) -> None:
        self._tasks.put((work, finished))

    def _serve(self) -> None:
        while True:
            work, finished = self._tasks.get()
            work()
            with _lock:  # idle again before the waiter is told: its next task can reuse us
                stay = len(_idle) < MAX_IDLE_WORKERS
                if stay:
                    _idle.append(self)
            finished()
            if not stay:
                return


_idle: list[_Worker] = []
_lock = threading.Lock()


def run_on_worker(work: Task, finished: Task) -> None:
    """Run `work()` then `finished()` on an idle worker, or on a new one if none is idle."""
    with _lock:
        worker = _idle.pop() if _idle else None
    if worker is None:
        worker = _Worker()
    worker.give(work, finished)


def idle_workers() -> int:
    return len(_idle)


def _forget_workers_after_fork() -> None:
    """A forked child has none of the parent's threads: its idle list must be empty."""
    global _lock
    _lock = threading.Lock()
    _idle.clear()


os.register_at_fork(after_in_child=_forget_workers_after_fork)


class BoundedCall:
    """`fn()` on a pooled worker, started at once, that the caller waits on for at most a
    budget (`wait`); the worker is not the caller's to wait for beyond it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.exc: BaseException | None = None
        self.finished_at: float | None = None
        context = contextvars.copy_context()  # a Context runs on one thread at a time
        self._fn: Callable[[], Any] = lambda: context.run(fn)
        self._done = threading.Lock()
        self._done.acquire()  # released once fn has finished
        self.started_at = time.perf_counter()
        run_on_worker(self._run, self._done.release)

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:
            self.exc = exc
        self.finished_at = time.perf_counter()

    def wait(self, budget_s: float) -> bool:
        """True when fn has finished within `budget_s` of its start."""
        if self.finished_at is None:
            remaining = budget_s - (time.perf_counter() - self.started_at)
            if self._done.acquire(timeout=max(remaining, 0.0)):
                self._done.release()  # a later wait returns at once too
        return self.finished_at is not None


class ChainedCall:
    """`fn`, to run on a BoundedCall's worker right after that call's own work, which
    decides whether it runs (`chain_to` gives the call; its function calls `fn`). Its
    value and exception are the call's."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.call: BoundedCall | None = None  # the call it follows, once started

    def chain_to(self, call: BoundedCall) -> None:
        self.call = call

    def wait(self, budget_s: float) -> bool:
        """True when the call and this have finished within `budget_s` of the call's start."""
        return self.call is not None and self.call.wait(budget_s)

    @property
    def value(self) -> Any:
        return None if self.call is None else self.call.value

    @property
    def exc(self) -> BaseException | None:
        return None if self.call is None else self.call.exc


# -- threads of their own ------------------------------------------------------------------


class Job(Protocol):
    def run(self) -> None: ...  # must not raise


class SerialThread:
    """A daemon thread running submitted jobs one at a time, in order, so that a caller
    can stop waiting: the job still finishes (and settles its own outcome)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: SimpleQueue[Job] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the thread now (shutdown may come when no new thread can start)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                try:
                    self._thread = start_daemon(self._name, self._serve)
                except RuntimeError:  # interpreter shutdown: no new threads
                    return False
            return True

    def submit(self, job: Job) -> None:
        if self.start():
            self._jobs.put(job)
        else:
            job.run()  # no thread to hand it to: bounded by the job's own timeouts

    def _serve(self) -> None:
        while True:
            self._jobs.get().run()


TIMER = ("timer", None)  # the message a MailboxThread's handler gets when its time has come


class MailboxThread:
    """A daemon thread that hands each posted message to `handle`, and TIMER once the
    time `handle` last returned (monotonic; None: none) has come. `post` is safe in a
    signal handler (SimpleQueue.put). `handle` must not raise."""

    def __init__(self, name: str, handle: Callable[[Any], float | None]) -> None:
        self._handle = handle
        self._inbox: SimpleQueue[Any] = SimpleQueue()
        self.thread = start_daemon(name, self._serve)

    def post(self, message: Any) -> None:
        self._inbox.put(message)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _serve(self) -> None:
        wake: float | None = None
        while True:
            try:
                timeout = None if wake is None else max(0.0, wake - time.monotonic())
                message = self._inbox.get(timeout=timeout)
            except Empty:
                message = TIMER
            wake = self._handle(message)
