"""One Lambda container's metrics state, and the one way to flush it.

`ContainerMetrics` owns what a container has recorded and not yet stored: the pending
deltas and EMF values (ops.metrics.pending), the outbox of batches not yet known to be
stored (ops.metrics.store), the flush policy's clock, and the store's connection.
`flush(reason)` is the only way they leave; `FlushReason` says who asks, and the
procedures behind each reason are in ops.metrics.flushing.

The families record into `current()`: the instance `using()` made active in this
context, or else the process's default instance, which is what a Lambda container
has. One process can therefore host many container identities (a fleet simulation,
one identity per thread or one at a time), each with its own deltas, outbox, clock and
connection. Work a request hands to another thread carries the context with it
(ops.concurrency); the flush's own jobs are bound to their instance.

Pure standard library: every function imports this on its hot path (the database
driver, the store and Powertools load at the first flush, in ops.metrics.flushing).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from ops.metrics.pending import Recordings

if TYPE_CHECKING:
    from ops.db import Database
    from ops.metrics.store import Outbox

SHUTDOWN_BUDGET_S = (
    0.25  # Lambda allows the runtime 300 ms after SIGTERM (500 ms with an extension)
)


class FlushReason(enum.Enum):
    """Who asks for a flush; ops.metrics.flushing says what each one does."""

    DUE = "due"  # end of an invocation: EMF always; the deltas when the policy says so
    NOW = "now"  # explicitly (`ops.metrics.flush()`): everything, waited for
    PROBE = "probe"  # the database health check carries the due deltas in its round trip
    DEADLINE = "deadline"  # the invocation's deadline is near: handed over, not waited for
    IDLE = "idle"  # a long-lived local process is idle: handed over, not waited for
    SHUTDOWN = "shutdown"  # the container ends: everything, within a budget


class ContainerMetrics:
    """One Lambda container's metrics state: pending deltas (and EMF), the outbox, the
    flush clock, and the store's connection (`connect`; default: ops.db.store_db)."""

    def __init__(
        self,
        *,
        connect: Callable[[], Database] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # the flush policy's; I/O budgets are always real time
        self.pending = Recordings(clock)  # what the families recorded since the last flush
        self._connect = connect
        self._db: Database | None = None
        self._outbox: Outbox | None = None
        self._lock = threading.Lock()  # creates the outbox and the connection once
        # The flush clock (self.clock's time).
        self.last_attempt = float("-inf")  # the last flush started
        self.last_end = float("-inf")  # the previous invocation ended
        self.probed = False  # this invocation's database check carried (or could carry) it
        self.probe_db: Database | None = None  # the connection a carried flush waits on
        self.retired = False  # replaced (ops.metrics.reset): late outcomes are not reported

    def flush(
        self, reason: FlushReason, *, background: bool = False, budget_s: float | None = None
    ) -> bool:
        """The one flush entry point; never raises, except PROBE when the database did
        not answer (the check fails). True when the deltas are known stored (or there is
        no database); False when kept for the next flush, handed over, or not carried.

        `background` (DUE, NOW): hand the flush to the flush thread and return False.
        `budget_s`: PROBE's check budget; SHUTDOWN's (default SHUTDOWN_BUDGET_S).
        """
        from ops.metrics import flushing  # the store, the driver, Powertools: first flush

        return flushing.flush(self, reason, background=background, budget_s=budget_s)

    def database(self) -> Database:
        """The store's connection: ops.db.store_db's, or this instance's own (`connect`)."""
        if self._connect is None:
            from ops.db import store_db

            return store_db()
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            return self._db

    @property
    def outbox(self) -> Outbox:
        """This container's identity, shard and batches not yet known stored (created by
        the first flush that has a database)."""
        with self._lock:
            if self._outbox is None:
                from ops.metrics.store import Outbox, config

                self._outbox = Outbox(config().shards)
            return self._outbox

    def outbox_if_any(self) -> Outbox | None:
        """The outbox if a flush ever made one (nothing was ever sent otherwise)."""
        return self._outbox

    def pending_since(self) -> float | None:
        """Time (self.clock) of the oldest delta not yet known to be stored (None: none)."""
        box = self._outbox
        times = [t for t in (self.pending.since, box.oldest() if box else None) if t is not None]
        return min(times, default=None)

    def abandon_probe(self) -> bool:
        """The database check gave up on the flush it carried: drop the connection it
        waits on (the next invocation connects afresh). False when it carried none."""
        db = self.probe_db
        if db is None:
            return False
        db.discard()
        return True


_default = ContainerMetrics()
_active: ContextVar[ContainerMetrics | None] = ContextVar("ops_metrics_container", default=None)


def current() -> ContainerMetrics:
    """The instance recordings go to: `using()`'s in this context, or the default."""
    active = _active.get()
    return _default if active is None else active


def default() -> ContainerMetrics:
    """The process's instance (a Lambda container has only this one)."""
    return _default


@contextmanager
def using(instance: ContainerMetrics) -> Iterator[ContainerMetrics]:
    """Records in this context (and work it hands to ops.concurrency) go to `instance`."""
    token = _active.set(instance)
    try:
        yield instance
    finally:
        _active.reset(token)


def replace_default() -> ContainerMetrics:
    """A new container: a fresh default instance; the old one's late outcomes are not
    reported (ops.metrics.reset, for tests)."""
    global _default
    _default.retired = True
    _default = ContainerMetrics()
    return _default
