"""A container identity's metrics state, for the fleet benchmark's workers: one
`ops.metrics.container.ContainerMetrics` per identity (its pending deltas and EMF values,
outbox, flush clock) with a store connection of its own, flushed by the one entry point."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ops.config import settings
from ops.db import Database, store_source
from ops.metrics import process_hooks, store
from ops.metrics.container import ContainerMetrics, FlushReason, using


def prepare() -> None:
    """No process-wide shutdown flush or deadline watch: the worker ends each identity."""
    process_hooks._installed = True


def new_state() -> ContainerMetrics:
    name = f"{settings().service}-metrics"
    return ContainerMetrics(connect=lambda: Database(application_name=name, source=store_source))


def active(state: ContainerMetrics) -> AbstractContextManager[ContainerMetrics]:
    return using(state)


def container(state: ContainerMetrics) -> str:
    box = state.outbox_if_any()
    return box.container if box is not None else ""


def _drop_connection(state: ContainerMetrics) -> None:
    if state.outbox_if_any() is not None:  # it flushed: it has a connection
        state.database().discard()  # the process is gone: no Terminate message


def shutdown(state: ContainerMetrics) -> None:
    state.flush(FlushReason.SHUTDOWN)
    _drop_connection(state)


def kill(state: ContainerMetrics) -> None:
    _drop_connection(state)  # a flush in flight settles as unknown: the cursor tells


def trace(current: Callable[[], Any], flushed: Callable[[Any, float, int], None]) -> None:
    """Note which batch each invocation's recordings joined (`owner.notes[seq]` = how many
    it had served), and time every flush job (one write transaction) of each identity."""
    add, run = store.Outbox.add, store._Job.run

    def traced_add(box: store.Outbox, deltas: Any) -> None:
        add(box, deltas)
        owner = box.__dict__.setdefault("fleet_owner", current())
        if box.batches:  # before any flush can send it: the batch covers `served`
            owner.notes[box.batches[-1].seq] = owner.served

    def traced_run(job: store._Job) -> None:
        started = time.perf_counter()
        run(job)
        series = sum(b.series for b in job.batches)
        flushed(job.box.__dict__["fleet_owner"], (time.perf_counter() - started) * 1000, series)

    store.Outbox.add = traced_add  # type: ignore[method-assign,assignment]
    store._Job.run = traced_run  # type: ignore[method-assign,assignment]
