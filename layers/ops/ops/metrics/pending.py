"""What a container recorded and has not sent yet: series deltas and EMF values.

A Lambda container's totals are meaningless on their own (each scrape would land
on a random container), so nothing here is ever rendered directly. The families
(ops.metrics.families) add what happened since the last flush, keyed by series,
to the active ContainerMetrics' `Recordings` (ops.metrics.container);
`take_deltas()` hands that to the store, which adds it to the totals in
PostgreSQL. What is recorded for CloudWatch (EMF) is kept apart, because it is
emitted on every flush whether or not the database took the deltas; it shares
the deltas' lock so that a recording takes one lock, not two.
Pure standard library: every function imports this on its hot path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ops.metrics.emf import EmfKey


class SeriesKey(NamedTuple):
    """One stored series (a row of metric_series)."""

    family: str
    labels: str  # rendered as in the exposition: `method="GET",route="/health"`
    part: str  # "" for a counter or gauge value, "sum", or a bucket's `le` ("10.0", "+Inf")


class Recordings:
    """Everything recorded since the last flush (deltas) or EMF emission."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the container's flush clock: `since` is read against it
        self.lock = threading.Lock()
        self.sums: dict[SeriesKey, float] = {}
        self.gauges: dict[SeriesKey, tuple[float, float]] = {}  # value, when (newest wins)
        self.since: float | None = None  # monotonic time of the oldest delta not yet taken
        # Counters and gauges: one summed value per flush; histograms: every observation.
        self.emf: dict[EmfKey, list[float]] = {}

    def add(self, key: SeriesKey, amount: float, emf: EmfKey | None) -> None:
        with self.lock:
            if self.since is None:
                self.since = self.clock()
            self.sums[key] = self.sums.get(key, 0.0) + amount
            if emf is not None:
                self._emf_add(emf, amount)

    def observe(self, keys: tuple[SeriesKey, SeriesKey], value: float, emf: EmfKey | None) -> None:
        bucket, total = keys
        with self.lock:
            if self.since is None:
                self.since = self.clock()
            sums = self.sums
            sums[bucket] = sums.get(bucket, 0.0) + 1.0
            sums[total] = sums.get(total, 0.0) + value
            if emf is not None:
                self.emf.setdefault(emf, []).append(value)

    def set(self, key: SeriesKey, value: float, emf: EmfKey | None, emf_value: float) -> None:
        with self.lock:
            if self.since is None:
                self.since = self.clock()
            self.gauges[key] = (value, time.time())
            if emf is not None:
                self._emf_add(emf, emf_value)

    def take_deltas(self) -> Deltas:
        """Hand over the series deltas recorded so far and start afresh."""
        with self.lock:
            deltas = Deltas(self.sums, self.gauges, self.since)
            self.sums, self.gauges, self.since = {}, {}, None
        return deltas

    def take_emf(self) -> dict[EmfKey, list[float]]:
        with self.lock:
            emf, self.emf = self.emf, {}
        return emf

    def _emf_add(self, emf: EmfKey, amount: float) -> None:
        values = self.emf.get(emf)
        if values is None:
            self.emf[emf] = [amount]
        else:
            values[0] += amount


class Deltas:
    """What a container recorded between two flushes."""

    __slots__ = ("gauges", "since", "sums")

    def __init__(
        self,
        sums: dict[SeriesKey, float],
        gauges: dict[SeriesKey, tuple[float, float]],
        since: float | None = None,
    ) -> None:
        self.sums = sums
        self.gauges = gauges
        self.since = since  # monotonic time of the oldest delta in here

    def __bool__(self) -> bool:
        return bool(self.sums or self.gauges)
