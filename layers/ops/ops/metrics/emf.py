"""The CloudWatch mirror: recordings as Embedded Metric Format lines on stdout, per interval.

Lambda ships stdout to CloudWatch Logs, which extracts the metrics; the
template's alarms use them. Written by Powertools Metrics (`EphemeralMetrics`):
one document per dimension set (EMF puts a dimension's value at the top level of
the line, so two values cannot share one), always with the `service` dimension
first. Counters go out as one summed value, durations as every observation
(`Values`: the SampleCount the latency alarm reads stays exact), rounded to 6
significant digits; Powertools starts a further line at 100 metrics or 100
values of one metric (EMF's limits).

`EmfBuffer` aggregates over METRICS_FLUSH_INTERVAL_S (0: a document set per
invocation, as before): each invocation's recordings are added at its end, and
the window is printed once it is due, so that one document per dimension set
stands for many invocations (docs/cloudwatch.md has the bytes). Due means: the
next invocation, at the spacing seen last, would end past the interval
(age + last gap >= interval; a first recording or one after a quiet spell of the
interval goes out at once), or a metric has 100 values (a full EMF line: a busy
container's windows are shorter, and what shutdown prints stays small), or the
window is forced (`metrics.flush()`, the deadline hand-over, shutdown). A window
never spans two UTC minutes (a chunk from a new minute prints the old window
first), and its `Timestamp` is its first chunk's time: CloudWatch puts every value
in the minute it was recorded in, which is what the 60-second alarm periods evaluate.
A frozen Lambda container runs nothing: a window open when traffic stops goes out
with the next invocation or at shutdown, stamped with its own time.

Powertools' settings, as Powertools Metrics reads them: POWERTOOLS_METRICS_DISABLED=true
(or POWERTOOLS_DEV=true with it unset) turns the lines off; the Prometheus side counts
as before. Without POWERTOOLS_METRICS_NAMESPACE there are no lines either, and the
first recordings that go nowhere log a warning, once per container (Powertools raises
at its flush instead; a missing namespace must not fail invocations).

A family says how it is mirrored (`Emf`, in ops.metrics.catalogue); each recording
adds to the container's pending EMF values (ops.metrics.pending, under the deltas'
lock) by its `EmfKey`; the flush takes them into the buffer here. The catalogue
imports this module for `Emf`: Powertools Metrics and ops.log load at the first
emission, so that importing the catalogue costs what it did before.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

from ops.config import settings


class EmfKey(NamedTuple):
    """One CloudWatch metric of a flush's EMF lines."""

    name: str
    unit: str
    dimension: str  # the extra dimension's name, "" when there is none
    value: str  # its value, "" when there is none
    observations: bool = False  # a histogram's: every value kept, else summed


class Emf:
    """How a family is mirrored to CloudWatch (EMF). Dimensions must stay bounded.

    `name` may use the family's labels (`retention_runs_{status}`) when those
    label values are a closed set, or be chosen from the labels by `name_of`
    (one of `names`); `dimension` derives one extra dimension from the labels;
    `value` maps a gauge reading to the emitted value.
    """

    __slots__ = ("dimension", "name", "name_of", "names", "unit", "value")

    def __init__(
        self,
        name: str,
        unit: str,
        dimension: tuple[str, Callable[[Mapping[str, str]], str]] | None = None,
        value: Callable[[float], float] | None = None,
        name_of: tuple[tuple[str, ...], Callable[[Mapping[str, str]], str]] | None = None,
    ) -> None:
        self.name = name
        self.unit = unit
        self.dimension = dimension
        self.value = value
        self.names: tuple[str, ...] = name_of[0] if name_of else (name,)
        self.name_of: Callable[[Mapping[str, str]], str] | None = name_of[1] if name_of else None

    def key(self, labels: Mapping[str, str]) -> EmfKey:
        if self.name_of is not None:
            name = self.name_of(labels)
        else:
            name = self.name.format(**labels) if "{" in self.name else self.name
        if self.dimension is None:
            return EmfKey(name, self.unit, "", "")
        dim_name, derive = self.dimension
        return EmfKey(name, self.unit, dim_name, derive(labels))


_warned_no_namespace = False


SIGNIFICANT_DIGITS = 6  # of a histogram's values: ~10 bytes each instead of ~20
MAX_VALUES = 100  # of one metric in one EMF line (EMF's limit; Powertools splits there)


def emit(recorded: dict[EmfKey, list[float]], timestamp_ms: int | None = None) -> int:
    """Print the EMF lines for `recorded` (stamped `timestamp_ms`, else now); returns
    how many dimension sets (documents)."""
    cfg = settings()
    namespace = cfg.metrics_namespace
    if not recorded or not cfg.emf_enabled:
        return 0
    if not namespace:
        _warn_no_namespace()
        return 0
    from aws_lambda_powertools.metrics import EphemeralMetrics  # at the first emission

    groups: dict[tuple[str, str], list[tuple[EmfKey, list[float]]]] = defaultdict(list)
    for key, values in recorded.items():
        groups[(key.dimension, key.value)].append((key, values))
    # Under the log handler's lock: a log line written from another thread (a flush
    # settling on the flush thread) must not land inside an EMF line, which CloudWatch
    # would then not parse.
    with _output_lock():
        for (dim_name, dim_value), metrics in sorted(groups.items()):
            document = EphemeralMetrics(namespace=namespace)
            if timestamp_ms is not None:
                document.set_timestamp(timestamp_ms)
            document.add_dimension("service", cfg.service)  # first, as the alarms were built
            if dim_name:
                document.add_dimension(dim_name, dim_value)
            # Histograms last: a line Powertools prints at their 100th value has the rest.
            for key, values in sorted(metrics, key=lambda item: item[0].observations):
                for value in values:
                    if key.observations:
                        value = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
                    document.add_metric(name=key.name, unit=key.unit, value=value)
            if document.metric_set:  # empty when the 100th value just printed the line
                document.flush_metrics()
    return len(groups)


class EmfBuffer:
    """A container's EMF values over one window (module docstring): `add` each
    invocation's recordings, printing the window when due; `drain` prints it now.
    Thread-safe: the deadline and shutdown flushes drain it from the process hooks'
    thread (ops.metrics.process_hooks). Each ContainerMetrics has its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[EmfKey, list[float]] = {}
        self._opened = 0.0  # monotonic time of the window's first chunk
        self._stamp_ms = 0  # its wall-clock time, the documents' Timestamp
        self._last_add = float("-inf")  # monotonic time of the previous chunk
        self._full = False  # a metric has MAX_VALUES values

    def add(self, recorded: dict[EmfKey, list[float]], interval_s: float) -> int:
        """Add one invocation's recordings; print the window if due (interval 0: now).
        Returns how many documents were printed."""
        now, wall = time.monotonic(), time.time()
        printed = 0
        with self._lock:
            gap, self._last_add = now - self._last_add, now
            if recorded:
                if self._values and int(wall // 60) != self._stamp_ms // 60_000:
                    printed += self._print()  # a window stays inside one UTC minute
                if not self._values:
                    self._opened, self._stamp_ms = now, int(wall * 1000)
                self._merge(recorded)
            # Due when the next chunk, at the last spacing, would come past the interval,
            # or when a metric has a full line of values (the print stays short at shutdown).
            if self._values and (now - self._opened + gap >= interval_s or self._full):
                printed += self._print()
        return printed

    def _merge(self, recorded: dict[EmfKey, list[float]]) -> None:
        values = self._values
        for key, new in recorded.items():
            old = values.get(key)
            if old is None:
                values[key] = old = list(new)
            elif key.observations:
                old.extend(new)
            else:
                old[0] += sum(new)
            if len(old) >= MAX_VALUES:
                self._full = True

    def drain(self) -> int:
        """Print the window now (a forced flush, the deadline, shutdown)."""
        with self._lock:
            return self._print() if self._values else 0

    def _print(self) -> int:
        values, self._values, self._full = self._values, {}, False
        return emit(values, self._stamp_ms)


def _output_lock() -> AbstractContextManager[Any]:
    from ops.log import logger  # at the first emission (module docstring)

    handler = logger.registered_handler
    return handler.lock if handler.lock is not None else nullcontext()


def _warn_no_namespace() -> None:
    global _warned_no_namespace
    if not _warned_no_namespace:
        _warned_no_namespace = True
        from ops.log import logger  # at the first emission (module docstring)

        logger.warning(
            "POWERTOOLS_METRICS_NAMESPACE is not set: no EMF lines, so CloudWatch gets no"
            " metrics from this container (set it, or POWERTOOLS_METRICS_DISABLED=true to"
            " turn EMF off on purpose); the Prometheus side is not affected",
            extra={"type": "metrics_flush", "status": "emf_off"},
        )


def reset() -> None:
    """A new container: the missing-namespace warning may be logged again (tests; the
    buffer is the ContainerMetrics', replaced with it)."""
    global _warned_no_namespace
    _warned_no_namespace = False
