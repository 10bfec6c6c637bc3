"""What a container recorded and has not sent yet: series deltas and EMF values.

A Lambda container's totals are meaningless on their own (each scrape would land
on a random container), so nothing here is ever rendered directly. The families
(ops.metrics.families) add what happened since the last flush, keyed by series;
`take_deltas()` hands that to the store, which adds it to the totals in
PostgreSQL. What is recorded for CloudWatch (EMF) is kept apart, because it is
emitted on every flush whether or not the database took the deltas; it shares
the deltas' lock so that a recording takes one lock, not two.
Pure standard library: every function imports this on its hot path.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from ops.metrics.emf import EmfKey


class SeriesKey(NamedTuple):
    """One stored series (a row of metric_series)."""

    family: str
    labels: str  # rendered as in the exposition: `method="GET",route="/health"`
    part: str  # "" for a counter or gauge value, "sum", or a bucket's `le` ("10.0", "+Inf")


class Recordings:
    """Everything recorded since the last flush (deltas) or EMF emission."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sums: dict[SeriesKey, float] = {}
        self.gauges: dict[SeriesKey, tuple[float, float]] = {}  # value, when (newest wins)
        self.since: float | None = None  # monotonic time of the oldest delta not yet taken
        # Counters and gauges: one summed value per flush; histograms: every observation.
        self.emf: dict[EmfKey, list[float]] = {}

    def add(self, key: SeriesKey, amount: float, emf: EmfKey | None) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
            self.sums[key] = self.sums.get(key, 0.0) + amount
            if emf is not None:
                self._emf_add(emf, amount)

    def observe(self, keys: tuple[SeriesKey, SeriesKey], value: float, emf: EmfKey | None) -> None:
        bucket, total = keys
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
            sums = self.sums
            sums[bucket] = sums.get(bucket, 0.0) + 1.0
            sums[total] = sums.get(total, 0.0) + value
            if emf is not None:
                self.emf.setdefault(emf, []).append(value)

    def set(self, key: SeriesKey, value: float, emf: EmfKey | None, emf_value: float) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
            self.gauges[key] = (value, time.time())
            if emf is not None:
                self._emf_add(emf, emf_value)

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


recordings = Recordings()  # this container's; the families record into it


def take_deltas() -> Deltas:
    """Hand over the series deltas recorded so far and start afresh."""
    r = recordings
    with r.lock:
        deltas = Deltas(r.sums, r.gauges, r.since)
        r.sums, r.gauges, r.since = {}, {}, None
    return deltas


def pending_since() -> float | None:
    """Monotonic time of the oldest delta recorded and not yet handed to the store."""
    return recordings.since


def take_emf() -> dict[EmfKey, list[float]]:
    r = recordings
    with r.lock:
        emf, r.emf = r.emf, {}
    return emf


def reset() -> None:
    """Forget everything recorded (a new container; tests)."""
    r = recordings
    with r.lock:
        r.sums, r.gauges, r.since, r.emf = {}, {}, None, {}
