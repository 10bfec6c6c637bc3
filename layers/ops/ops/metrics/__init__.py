"""Prometheus metrics that are right across Lambda containers, mirrored to CloudWatch.

Record with the catalogue's families, anywhere in any function:

    from ops.metrics import catalogue as m
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    m.TOOL_CALL_DURATION.labels(tool="search").observe(elapsed_ms)

API functions (`ops.api.Api`) record every response and flush after each
invocation on their own. Other functions call `flush()` at the end of theirs:

    from ops.metrics import flush
    flush()  # never raises; False when the deltas were kept for the next flush

Importing this package (and the catalogue) costs only the standard library;
the store, the database driver and Powertools Metrics load on the first flush.
"""

from __future__ import annotations

from ops.config import settings


def function_name() -> str:
    """The `function` label: the Lambda function's name (the local gateway sets it too)."""
    return settings().function_name


def flush() -> bool:
    """Send the deltas to PostgreSQL and the recordings to CloudWatch (EMF)."""
    from ops.metrics.flusher import flush as flush_now

    return flush_now()


def flush_if_due() -> bool | None:
    """Flush only if the last flush is older than METRICS_DEFERRED_FLUSH_S (default 30);
    None when skipped. For probe routes: their deltas go with the container's next flush,
    and at least every 30 seconds."""
    from ops.metrics.flusher import flush_if_due as flush_when_due

    return flush_when_due()


def reset() -> None:
    """Forget everything recorded and pending, as a new container would (tests)."""
    from ops.metrics import emf, flusher, recorder, store, totals

    flusher.reset()
    recorder.reset()
    store.reset()
    totals.reset()
    emf.reset()
