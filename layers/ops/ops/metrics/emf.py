"""The CloudWatch mirror: a flush's recordings as Embedded Metric Format lines on stdout.

Lambda ships stdout to CloudWatch Logs, which extracts the metrics; the
template's alarms use them. Written by Powertools Metrics (`EphemeralMetrics`):
one document per dimension set of a flush (EMF puts a dimension's value at the
top level of the line, so two values cannot share one), always with the
`service` dimension first. Counters go out as one summed value per flush,
durations as every observation; Powertools starts a further line at 100
metrics or 100 values of one metric (EMF's limits). Powertools costs tens of
microseconds per flush more than the hand-written lines it replaced, invisible
next to a flush (benchmarks/README.md, suite libraries).

Powertools' settings, as Powertools Metrics reads them: POWERTOOLS_METRICS_DISABLED=true
(or POWERTOOLS_DEV=true with it unset) turns the lines off; the Prometheus side counts
as before. Without POWERTOOLS_METRICS_NAMESPACE there are no lines either, and the
first recordings that go nowhere log a warning, once per container (Powertools raises
at its flush instead; a missing namespace must not fail invocations).

A family says how it is mirrored (`Emf`, in ops.metrics.catalogue); each recording
adds to the container's pending EMF values (ops.metrics.pending, under the deltas'
lock) by its `EmfKey`; every flush takes them and prints them here. The catalogue
imports this module for `Emf`: Powertools Metrics and ops.log load at the first
emission, so that importing the catalogue costs what it did before.
"""

from __future__ import annotations

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


def emit(recorded: dict[EmfKey, list[float]]) -> int:
    """Print the EMF lines for `recorded`; returns how many dimension sets (documents)."""
    cfg = settings()
    namespace = cfg.metrics_namespace
    if not recorded or not cfg.emf_enabled:
        return 0
    if not namespace:
        _warn_no_namespace()
        return 0
    from aws_lambda_powertools.metrics import EphemeralMetrics  # at the first emission

    groups: dict[tuple[str, str], list[tuple[str, str, list[float]]]] = defaultdict(list)
    for (name, unit, dim_name, dim_value), values in recorded.items():
        groups[(dim_name, dim_value)].append((name, unit, values))
    # Under the log handler's lock: a log line written from another thread (a flush
    # settling on the courier) must not land inside an EMF line, which CloudWatch
    # would then not parse.
    with _output_lock():
        for (dim_name, dim_value), metrics in sorted(groups.items()):
            document = EphemeralMetrics(namespace=namespace)
            document.add_dimension("service", cfg.service)  # first, as the alarms were built
            if dim_name:
                document.add_dimension(dim_name, dim_value)
            for name, unit, values in metrics:
                for value in values:
                    document.add_metric(name=name, unit=unit, value=value)
            document.flush_metrics()
    return len(groups)


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
    """A new container: the missing-namespace warning may be logged again (tests)."""
    global _warned_no_namespace
    _warned_no_namespace = False
