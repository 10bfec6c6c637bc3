"""A helper thread that runs flush jobs one at a time, so that callers can stop waiting.

The flush uses it to bound what it adds to an invocation: a database that hangs
keeps the courier busy, not the invocation. A job the caller stopped waiting for
still finishes and settles its own outcome; routes that must never wait (liveness)
hand a job over and return.
"""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Protocol


class Job(Protocol):
    def run(self) -> None: ...  # must not raise


class Courier:
    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: SimpleQueue[Job] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the thread now (shutdown may come when no new thread can start)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # interpreter shutdown: no new threads
                    return False
                self._thread = thread
            return True

    def submit(self, job: Job) -> None:
        if self.start():
            self._jobs.put(job)
        else:
            job.run()  # no thread to hand it to: bounded by the connection's own timeouts

    def _serve(self) -> None:
        while True:
            self._jobs.get().run()
