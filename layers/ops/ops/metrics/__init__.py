"""Prometheus metrics that are right across Lambda containers, mirrored to CloudWatch.

Record with the catalogue's families, anywhere in any function:

    from ops.metrics import catalogue as m
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    m.TOOL_CALL_DURATION.labels(tool="search").observe(elapsed_ms)

API functions (`ops.service.service_api()`) record every response and flush by the
policy (METRICS_FLUSH_INTERVAL_S; ops.metrics.flusher) on their own, and at shutdown.
Other functions call `install_shutdown_flush()` at init and `flush()` at the end
of each invocation:

    from ops.metrics import flush
    flush()  # never raises; False when the deltas were kept for the next flush

Importing this package (and the catalogue) costs only the standard library;
the store, the database driver and Powertools Metrics load on the first flush.

Where a recorded value goes, and how it comes back (module by module):

    record        catalogue (the families), recorder (counters, histograms, gauges)
      -> pending deltas, per container        recorder.Deltas, keyed by SeriesKey
      -> flush     flusher (when), courier (a thread to bound the wait),
                   lifecycle (before the deadline, at shutdown), http (after each response);
                   emf (the CloudWatch copy of the same recordings)
      -> PostgreSQL   store (one round trip: SELECT metrics_flush(...), migrations/)
      -> totals    totals (sums over shards, read at scrape time)
      -> exposition   render (text 0.0.4 or OpenMetrics), text_format (every spelling)
"""

from __future__ import annotations


def flush() -> bool:
    """Send the deltas to PostgreSQL and the recordings to CloudWatch (EMF), now."""
    from ops.metrics.flusher import flush as flush_now

    return flush_now()


def install_shutdown_flush(*, idle_flush: bool = False) -> None:
    """At init (module level) in functions not built on ops.api.Api: flush what is
    pending at shutdown and before the invocation deadline (ops.metrics.lifecycle)."""
    from ops.metrics.lifecycle import install

    install(idle_flush=idle_flush)


def reset() -> None:
    """Forget everything recorded and pending, as a new container would (tests)."""
    from ops.metrics import emf, flusher, recorder, store, totals

    flusher.reset()
    recorder.reset()
    store.reset()
    totals.reset()
    emf.reset()
