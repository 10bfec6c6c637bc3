"""End of an invocation: deltas to PostgreSQL, recordings to CloudWatch (EMF).

A failed flush never fails the invocation: its deltas stay pending and go with
the next flush, the failure is counted (`metrics_flush_failures_total`, sent
with that next flush, and `metrics_flush_failures` in EMF right away, which
does not need the database) and logged as `type=metrics_flush`.
"""

from __future__ import annotations

import time

from ops.config import settings
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics import emf, function_name, recorder, store


def _store_configured() -> bool:
    cfg = settings()
    return bool(cfg.database_url or cfg.db_secret_arn)


def flush() -> bool:
    """Send what was recorded since the last flush. Never raises; True when stored."""
    try:
        stored = _flush_deltas()
    except Exception as exc:  # a bug here must not fail the invocation either
        logger.warning("metrics flush failed", extra={"type": "metrics_flush", "error": repr(exc)})
        stored = False
    try:
        emf.emit(recorder.take_emf())
    except Exception as exc:
        logger.warning("EMF emission failed", extra={"type": "metrics_flush", "error": repr(exc)})
    return stored


def _flush_deltas() -> bool:
    deltas = recorder.take_deltas()
    if not _store_configured():
        return True  # no database: the Prometheus side is off, EMF still goes out
    started = time.perf_counter()
    result = store.push(deltas, time.time())
    elapsed_ms = (time.perf_counter() - started) * 1000.0
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
            "duration": round(elapsed_ms, 3),
        },
    )
    return False
