"""A helper thread that runs one job at a time, so that the caller can stop waiting.

The flush uses it to bound what it adds to an invocation: a database that hangs
(or a health check stuck on the shared connection) keeps the courier busy, not
the invocation. A job the caller stopped waiting for still finishes; until it
does, the courier reports itself busy and takes no other job, so nothing queues.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Protocol


class Job(Protocol):
    finished: bool  # set by run(), whatever happens

    def run(self) -> None: ...


class Courier:
    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: SimpleQueue[Job] = SimpleQueue()
        self._done: SimpleQueue[Job] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._abandoned: Job | None = None

    @property
    def busy(self) -> bool:
        return self._abandoned is not None and not self._abandoned.finished

    def run(self, job: Job, wait_s: float, meanwhile: Callable[[], None]) -> bool:
        """Hand the job over, call `meanwhile`; True when the job finished within `wait_s`."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        deadline = time.monotonic() + wait_s
        self._jobs.put(job)
        time.sleep(0)  # let the courier take the GIL and start (send its query)...
        meanwhile()  # ...so that this overlaps the wait for the server
        try:
            while self._done.get(timeout=max(0.0, deadline - time.monotonic())) is not job:
                pass  # the late answer of a job given up on earlier
        except Empty:
            self._abandoned = job
            return False
        self._abandoned = None
        return True

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            job.run()
            self._done.put(job)
