"""End of an invocation: deltas to PostgreSQL, recordings to CloudWatch (EMF).

The EMF lines are printed while the flush query is in flight, so they cost the
invocation next to nothing. A failed flush never fails the invocation: its
deltas stay pending and go with the next flush; the failure is counted
(`metrics_flush_failures_total`, stored with that next flush, and
`metrics_flush_failures` in EMF at once, which needs no database) and logged
as `type=metrics_flush`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ops.config import settings
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics import emf, function_name, recorder, store


def _emit() -> None:
    try:
        emf.emit(recorder.take_emf())
    except Exception as exc:  # CloudWatch's copy must not fail the invocation either
        logger.warning("EMF emission failed", extra={"type": "metrics_flush", "error": repr(exc)})


def _store_configured() -> bool:
    cfg = settings()
    return bool(cfg.database_url or cfg.db_secret_arn)


_last_flush = time.monotonic()  # a new container counts as just flushed


def reset() -> None:
    global _last_flush
    _last_flush = time.monotonic()


def flush_if_due() -> bool | None:
    """Flush when the last one is older than METRICS_DEFERRED_FLUSH_S; None when skipped.

    Bounds what a deferring route can leave behind in a container that Lambda
    reaps without another invocation: at most that many seconds of its recordings.
    """
    max_age = settings().metrics_deferred_flush_s
    if time.monotonic() - _last_flush < max_age:
        return None
    return flush()


def flush() -> bool:
    """Send what was recorded since the last flush. Never raises; True when stored."""
    global _last_flush
    _last_flush = time.monotonic()
    emitted = False

    def emit_once() -> None:
        nonlocal emitted
        if not emitted:
            emitted = True
            _emit()

    try:
        stored = _flush_deltas(emit_once)
    except Exception as exc:  # a bug here must not fail the invocation
        logger.warning("metrics flush failed", extra={"type": "metrics_flush", "error": repr(exc)})
        stored = False
    emit_once()
    if not stored:
        _emit()  # the failure just counted
    return stored


def _flush_deltas(meanwhile: Callable[[], None]) -> bool:
    deltas = recorder.take_deltas()
    if not _store_configured():
        return True  # no database: the Prometheus side is off, EMF still goes out
    started = time.perf_counter()
    result = store.push(deltas, time.time(), meanwhile)
    if result.outcome == store.FlushOutcome.STORED:
        return True
    m.METRICS_FLUSH_FAILURES.labels(function=function_name()).inc()
    log = logger.error if result.dropped_series else logger.warning
    log(
        "metrics flush failed; deltas kept for the next flush",
        extra={
            "type": "metrics_flush",
            "status": "failed",
            "outcome": result.outcome,
            "error": result.error,
            "pendingSeries": result.pending_series,
            "droppedSeries": result.dropped_series,
            "duration": round((time.perf_counter() - started) * 1000.0, 3),
        },
    )
    return False
