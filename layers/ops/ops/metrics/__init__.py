"""Prometheus metrics that are right across Lambda containers, mirrored to CloudWatch.

Record with the catalogue's families, anywhere in any function:

    from ops.metrics import catalogue as m
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    m.TOOL_CALL_DURATION.labels(tool="search").observe(elapsed_seconds)

API functions (`ops.wiring.service_api()`) record every response and flush by the
policy (METRICS_FLUSH_INTERVAL_S) on their own, and at shutdown. Other functions call
`install_shutdown_flush()` at init and `flush()` at the end of each invocation:

    from ops.metrics import flush
    flush()  # never raises; False when the deltas were kept for the next flush

What a container recorded and has not stored is one object's, `ContainerMetrics`
(ops.metrics.container): a Lambda container has the process's default instance; a
process hosting many container identities (a fleet simulation) gives each its own and
records with `using(instance)`. `instance.flush(FlushReason.X)` is the one flush.

A team declares its own families in its own function, with the same classes; the
metrics function exposes them from what the flushes stored (name, type, help, labels,
buckets), without importing the team's code:

    from ops.metrics import Counter, Histogram
    ORDERS = Counter("orders_total", "Orders placed, by outcome.", ("outcome",))

Importing this package (and the catalogue) costs only the standard library;
the store, the database driver and Powertools Metrics load on the first flush.

Where a recorded value goes, and how it comes back. The modules are named for the
steps, in order (`exposition` as prometheus_client names it; `flushing`, because
`ops.metrics.flush` is the function below):

    step           module        what it holds
    write side, in every function:
    record         families      Counter, Histogram, Gauge: what code records with
                                 (catalogue declares the product's families with them)
    -> pending     pending       a container's deltas by SeriesKey, since the last flush,
                                 and which container is active (the families' target)
                   container     ContainerMetrics: the pending deltas, the outbox, the flush
                                 clock, the store's connection; current() and using()
    -> flush       flushing      what each FlushReason does: when the deltas are due, and
                                 sending them (on the outbox's SerialThread: ops.concurrency)
                   router_hooks  who asks, in an API function: after each response of an
                                 ops.api.Api, and the database check's round trip
                   process_hooks who asks, in the process: before the deadline, when idle,
                                 at shutdown (signals, exit; ops.extensions_api on Lambda)
    -> PostgreSQL  store         the outbox of DeltaBatches; one round trip:
                                 SELECT metrics_flush(...) (migrations/)
    read side, in the metrics function at scrape time:
    -> totals      totals        the sums over shards, read from PostgreSQL
    -> exposition  exposition    the text format 0.0.4 or OpenMetrics 1.0.0

text_format spells label sets, bucket bounds and values for both sides (a series is
stored under its label set as exposed). The CloudWatch copy takes the same way to
the flush: pending holds the EMF values too (one lock per recording), and emf
prints them as EMF lines (`Emf` and `EmfKey` there say how a family is mirrored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The catalogue first: its families are declared (and their names reserved) before any
# team's, which `ops.metrics.families` then marks as a team's own.
from ops.metrics import catalogue  # noqa: F401
from ops.metrics.container import ContainerMetrics, FlushReason, current, using

if TYPE_CHECKING:
    from ops.metrics.emf import Emf
    from ops.metrics.families import Counter, Gauge, Histogram

__all__ = [
    "ContainerMetrics",
    "Counter",
    "Emf",
    "FlushReason",
    "Gauge",
    "Histogram",
    "current",
    "flush",
    "install_shutdown_flush",
    "reset",
    "using",
]


def __getattr__(name: str) -> Any:
    """`from ops.metrics import Counter` (Histogram, Gauge, Emf): loaded when first asked for."""
    if name in ("Counter", "Gauge", "Histogram"):
        from ops.metrics import families

        return getattr(families, name)
    if name == "Emf":
        from ops.metrics.emf import Emf

        return Emf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The functions below import their modules when called, not here: importing the package
# (every function does, at init) must cost only the standard library (cold start).


def flush() -> bool:
    """Send the deltas to PostgreSQL and the recordings to CloudWatch (EMF), now: the
    active container's (`current()`). Never raises."""
    return current().flush(FlushReason.NOW)


def install_shutdown_flush(*, idle_flush: bool = False) -> None:
    """At init (module level) in functions not built on ops.api.Api: flush what is
    pending at shutdown and before the invocation deadline (ops.metrics.process_hooks)."""
    from ops.metrics.process_hooks import install

    install(idle_flush=idle_flush)


def reset() -> None:
    """Forget everything recorded and pending, as a new container would (tests): a new
    default ContainerMetrics, and the caches that belong to the process."""
    from ops.metrics import container, emf, totals

    container.replace_default()
    totals.reset()
    emf.reset()
