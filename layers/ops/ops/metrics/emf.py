"""The CloudWatch mirror: a flush's recordings as Embedded Metric Format lines on stdout.

Lambda ships stdout to CloudWatch Logs, which extracts the metrics; the
template's alarms use them. One line per distinct extra dimension (EMF puts a
dimension's value at the top level of the line, so two values cannot share
one), always with the `service` dimension. Counters go out as one summed value
per flush, durations as every observation (Powertools splits at 100 values).
Skipped when POWERTOOLS_METRICS_NAMESPACE is not set (local runs without it).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics

from ops.config import settings
from ops.log import logger
from ops.metrics.recorder import EmfKey

# One Powertools emitter per (namespace, service, dimension, value): dimensions are a
# closed set, and reusing an emitter halves the cost of a line.
_emitters: dict[tuple[str, str, str, str], EphemeralMetrics] = {}


def _emitter(namespace: str, service: str, dim_name: str, dim_value: str) -> EphemeralMetrics:
    key = (namespace, service, dim_name, dim_value)
    emitter = _emitters.get(key)
    if emitter is None:
        emitter = EphemeralMetrics(namespace=namespace, service=service)
        dimensions = {"service": service, **({dim_name: dim_value} if dim_name else {})}
        emitter.set_default_dimensions(**dimensions)  # kept across flush_metrics()
        _emitters[key] = emitter
    return emitter


def emit(recorded: dict[EmfKey, list[float]]) -> int:
    """Print the EMF lines for `recorded`; returns how many lines (dimension groups)."""
    cfg = settings()
    namespace = cfg.metrics_namespace
    if not recorded or not namespace:
        return 0
    groups: dict[tuple[str, str], list[tuple[str, str, list[float]]]] = defaultdict(list)
    for (name, unit, dim_name, dim_value), values in recorded.items():
        groups[(dim_name, dim_value)].append((name, unit, values))
    service = cfg.service
    # Under the log handler's lock: a log line written from another thread (a flush
    # settling on the courier) must not land inside an EMF line, which CloudWatch
    # would then not parse.
    with _output_lock():
        for (dim_name, dim_value), metrics in sorted(groups.items()):
            line = _emitter(namespace, service, dim_name, dim_value)
            for name, unit, values in metrics:
                for value in values:
                    line.add_metric(name=name, unit=unit, value=value)
            line.flush_metrics()
    return len(groups)


def _output_lock() -> AbstractContextManager[Any]:
    handler = logger.registered_handler
    return handler.lock if handler.lock is not None else nullcontext()


def reset() -> None:
    _emitters.clear()
