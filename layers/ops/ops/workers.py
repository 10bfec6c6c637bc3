"""Idle daemon threads, reused for bounded work (dependency checks, the scrape's read).

A new thread per task cost a warm `/health` more than its query: `Thread.start()`
creates the thread and then waits until it runs, one more trip through the
scheduler (profile in benchmarks/README.md). A worker that has finished its task
waits for the next instead. A worker stuck on a hung dependency is simply not
idle: the next task takes another idle worker, or a new one, never a place in a
queue behind it. At most MAX_IDLE workers stay; the others end after their task.

Not concurrent.futures: a ThreadPoolExecutor joins its workers at interpreter exit,
so a check hung on a dependency would hold the end of the process (a Lambda shutdown,
a `make run` Ctrl-C) for the whole hang; these are daemon threads (measured:
benchmarks/README.md, suite libraries).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from queue import SimpleQueue

MAX_IDLE = 4  # a request runs one task per check; a few spare cover a hung one or two

Task = Callable[[], None]  # must not raise


class _Worker:
    def __init__(self) -> None:
        self._tasks: SimpleQueue[tuple[Task, Task]] = SimpleQueue()
        threading.Thread(target=self._serve, name="ops-worker", daemon=True).start()

    def give(self, work: Task, finished: Task) -> None:
        self._tasks.put((work, finished))

    def _serve(self) -> None:
        while True:
            work, finished = self._tasks.get()
            work()
            with _lock:  # idle again before the waiter is told: its next task can reuse us
                stay = len(_idle) < MAX_IDLE
                if stay:
                    _idle.append(self)
            finished()
            if not stay:
                return


_idle: list[_Worker] = []
_lock = threading.Lock()


def submit(work: Task, finished: Task) -> None:
    """Run `work()` then `finished()` on an idle worker, or on a new one if none is idle."""
    with _lock:
        worker = _idle.pop() if _idle else None
    if worker is None:
        worker = _Worker()
    worker.give(work, finished)


def idle() -> int:
    return len(_idle)


def _forget_after_fork() -> None:
    """A forked child has none of the parent's threads: its idle list must be empty."""
    global _lock
    _lock = threading.Lock()
    _idle.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
