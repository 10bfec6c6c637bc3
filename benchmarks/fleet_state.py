"""A container identity's metrics state, for the fleet benchmark's workers.

The layer keeps a container's metrics state in module globals (pending recordings, the
outbox, the flush clock, the connections), so an identity here is the set of those
values, swapped in around each of its invocations and its shutdown flush: the real objects,
one set per identity, the layer's code unchanged. (When one object owns that state,
`ops.metrics.container.ContainerMetrics`, this module becomes a thin use of it.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ops import db
from ops.metrics import families, flushing, lifecycle, pending, store

SLOTS = (
    (pending, "recordings"),
    (families, "recordings"),  # bound at import: the same object as pending's
    (store, "_outbox"),
    (flushing, "_last_attempt"),
    (flushing, "_last_end"),
    (flushing, "_probed"),
    (flushing, "_probe_db"),
    (db, "_default"),
    (db, "_store"),
)


def prepare() -> None:
    """No process-wide shutdown flush or deadline watch: the worker ends each identity."""
    lifecycle._installed = True


def new_state(owner: Any) -> list[Any]:
    recordings = pending.Recordings()
    return [recordings, recordings, None, float("-inf"), float("-inf"), False, None, None, None]


@contextmanager
def using(state: list[Any]) -> Iterator[None]:
    for (module, name), value in zip(SLOTS, state, strict=True):
        setattr(module, name, value)
    try:
        yield
    finally:
        state[:] = [getattr(module, name) for module, name in SLOTS]


def container(state: list[Any]) -> str:
    box = state[2]
    return box.container if box is not None else ""


def _drop_connections(state: list[Any]) -> None:
    for handle in state[7:9]:
        if handle is not None:
            handle.discard()  # the process is gone: no Terminate message


def shutdown(state: list[Any]) -> None:
    with using(state):
        flushing.flush_before_exit(lifecycle.SHUTDOWN_BUDGET_S)
    _drop_connections(state)


def kill(state: list[Any]) -> None:
    _drop_connections(state)  # a flush in flight settles as unknown: the cursor tells


def trace(current: Callable[[], Any], flushed: Callable[[Any, float, int], None]) -> None:
    """Note which batch each invocation's recordings joined (`owner.notes[seq]` = how many
    it had served), and time every flush job (one write transaction) of each identity."""
    add, run = store.Outbox.add, store._Job.run

    def traced_add(box: store.Outbox, deltas: pending.Deltas) -> None:
        add(box, deltas)
        owner = box.__dict__.setdefault("fleet_owner", current())
        if box.batches:  # before any flush can send it: the batch covers `served`
            owner.notes[box.batches[-1].seq] = owner.served

    def traced_run(job: store._Job) -> None:
        started = time.perf_counter()
        run(job)
        series = sum(b.series for b in job.batches)
        flushed(job.box.__dict__["fleet_owner"], (time.perf_counter() - started) * 1000, series)

    store.Outbox.add = traced_add  # type: ignore[method-assign]
    store._Job.run = traced_run  # type: ignore[method-assign]
