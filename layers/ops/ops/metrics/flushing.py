"""The flush procedures behind `ContainerMetrics.flush(reason)` (ops.metrics.container):
when a container's pending deltas go to PostgreSQL and its EMF values to CloudWatch.

* EMF lines go out at the end of every invocation (DUE), whatever the database flush
  does (CloudWatch's copy needs no database), and with every explicit flush (NOW).
* Deltas are due once the oldest pending one is METRICS_FLUSH_INTERVAL_S old
  (0: every invocation), checked at the end of each invocation (DUE; by the
  container's own clock); and at once when the
  invocation follows a quiet spell of that long (a sparse container's counts would
  otherwise wait for its next invocation, minutes away; its writes are few anyway).
* An invocation makes at most one flush round trip. A database health check carries
  the due deltas in its own round trip (PROBE: no extra write per probe; not when the
  store has a database of its own, ops.db.separate_store);
  the invocation's own recordings then wait for the next flush. Otherwise the flush
  runs at the end of the invocation: waited for (at most 2 x METRICS_FLUSH_TIMEOUT_MS),
  except on routes that must never wait on the database (`background=True`:
  liveness, /metrics), which hand it to the flush thread and return.
* Before the invocation's deadline (DEADLINE), when a long-lived local process idles
  (IDLE): handed over without waiting; at shutdown (SHUTDOWN): everything within a
  budget. ops.metrics.process_hooks asks for these.

A failed flush never fails the invocation: its deltas stay pending. Its outcome is
settled by the flush job itself (also when nobody waited for it): failures are
counted (`metrics_flush_failures_total`, stored with a later flush, and in EMF at
once) and logged as `type=metrics_flush`; unconfirmed batches dropped past the
outbox's bound are counted (`metrics_deltas_dropped_total{reason="unconfirmed"}`: sent
without a reply, they may have been stored) and logged as dropped, as are the deltas of a
team family the store refused (`reason="family_conflict"`).
"""

from __future__ import annotations

import time

from ops.config import settings
from ops.db import DatabaseUnavailable, separate_store, store_source
from ops.log import logger
from ops.metrics import catalogue as m
from ops.metrics import emf, store
from ops.metrics.catalogue import function_name
from ops.metrics.container import SHUTDOWN_BUDGET_S, ContainerMetrics, FlushReason, using
from ops.tracing import span

# A kept connection silent for this share of the shutdown budget (or twice its last reply
# time, on a slow link) is given up for a fresh one.
FRESH_AFTER = 0.4


def flush(
    c: ContainerMetrics, reason: FlushReason, *, background: bool, budget_s: float | None
) -> bool:
    """ContainerMetrics.flush: the procedure for `reason` (see the module docstring).
    Raises only for PROBE (the check fails); otherwise a bug here is logged, never raised."""
    if reason is FlushReason.PROBE:
        return _probe(c, settings().health_db_budget_s if budget_s is None else budget_s)
    try:
        if reason is FlushReason.DUE:
            return _end_invocation(c, background=background)
        if reason is FlushReason.NOW:
            return _now(c, background=background)
        if reason in (FlushReason.DEADLINE, FlushReason.IDLE):
            _hand_over(c)
            return False
        return _before_exit(c, SHUTDOWN_BUDGET_S if budget_s is None else budget_s)
    except Exception as exc:  # the flush must not fail the invocation, or the exit
        logger.warning(
            "metrics flush failed",
            extra={"type": "metrics_flush", "reason": reason.value, "error": repr(exc)},
        )
        return False


def _emit(c: ContainerMetrics) -> None:
    try:
        emf.emit(c.pending.take_emf())
    except Exception as exc:  # CloudWatch's copy must not fail the invocation either
        logger.warning("EMF emission failed", extra={"type": "metrics_flush", "error": repr(exc)})


def _store_configured() -> bool:
    return store_source(settings()).configured


def interval_s() -> float:
    return settings().metrics_flush_interval_s


def due(c: ContainerMetrics, now: float | None = None) -> bool:
    """Pending deltas older than the interval, and no flush started within it; or any
    pending deltas when the previous invocation ended at least the interval ago."""
    since = c.pending_since()
    if since is None:
        return False
    now = c.clock() if now is None else now
    interval = interval_s()
    if now - c.last_end >= interval:
        return True
    return now - since >= interval and now - c.last_attempt >= interval


def report(c: ContainerMetrics, result: store.FlushResult, *, failures: bool = True) -> None:
    """The settled outcome of a flush job (on the flush thread): count and log what was
    dropped, and failures (not at shutdown: there the loss is reported once, as lost).
    Counted in the job's own container; not at all once it was replaced (a reset)."""
    if c.retired:
        return
    with using(c):
        _report(result, failures=failures)


def _report(result: store.FlushResult, *, failures: bool) -> None:
    if result.dropped_batches:
        m.METRICS_DELTAS_DROPPED.labels(function=function_name(), reason="unconfirmed").inc(
            result.dropped_series
        )
        logger.error(
            "metrics flush: unconfirmed deltas dropped (outbox full): sent without a reply,"
            " they may or may not have been stored",
            extra={
                "type": "metrics_flush",
                "status": "dropped",
                "droppedBatches": result.dropped_batches,
                "droppedSeries": result.dropped_series,
                "pendingSeries": result.pending_series,
                "error": result.error,
            },
        )
    if result.refused_series:
        m.METRICS_DELTAS_DROPPED.labels(function=function_name(), reason="family_conflict").inc(
            result.refused_series
        )
    if result.refused:
        logger.error(
            "metrics flush: the store refused these families (declared elsewhere with another"
            " shape): this container will not store their deltas (CloudWatch still gets them);"
            " the rest was flushed",
            extra={
                "type": "metrics_flush",
                "status": "refused",
                "families": list(result.refused),
                "droppedSeries": result.refused_series,
            },
        )
    if result.stored or not failures:
        return
    m.METRICS_FLUSH_FAILURES.labels(function=function_name()).inc()
    logger.warning(
        "metrics flush failed; deltas kept for the next flush",
        extra={
            "type": "metrics_flush",
            "status": "failed",
            "outcome": result.outcome,
            "error": result.error,
            "pendingSeries": result.pending_series,
        },
    )


def _push(
    c: ContainerMetrics,
    wait_s: float | None,
    meanwhile: object = None,
    *,
    wait_busy: bool = True,
) -> store.FlushResult:
    c.last_attempt = c.clock()
    with span("metrics flush", waited=wait_s != 0.0) as traced:
        result = store.push(
            c.outbox,
            c.database(),
            c.pending.take_deltas(),
            time.time(),
            wait_s=wait_s,
            meanwhile=meanwhile if callable(meanwhile) else (lambda: None),
            report=lambda r: report(c, r),
            wait_busy=wait_busy,
        )
        traced.set(outcome=str(result.outcome))  # `pending`: handed over, not waited for
        return result


def _now(c: ContainerMetrics, *, background: bool = False) -> bool:
    """Send what is pending now, and the EMF lines. Never raises.

    True when stored (or no database is configured); `background` hands the flush to
    the flush thread without waiting and returns False.
    """
    emitted = False

    def emit_once() -> None:
        nonlocal emitted
        if not emitted:
            emitted = True
            _emit(c)

    stored = False
    try:
        if not _store_configured():
            c.pending.take_deltas()  # no database: the Prometheus side is off, EMF still goes out
            stored = True
        else:
            stored = _push(c, 0.0 if background else None, emit_once).stored
    except Exception as exc:  # a bug here must not fail the invocation
        logger.warning("metrics flush failed", extra={"type": "metrics_flush", "error": repr(exc)})
    emit_once()
    if not stored and not background:
        _emit(c)  # the failure just counted
    return stored


def _end_invocation(c: ContainerMetrics, *, background: bool = False) -> bool:
    """The policy at the end of an invocation: EMF always; the deltas when due, unless
    this invocation's database check already made the round trip."""
    probed, c.probed = c.probed, False
    try:
        if probed or not due(c):
            _emit(c)
            return False
        return _now(c, background=background)
    finally:
        c.last_end = c.clock()


def _hand_over(c: ContainerMetrics) -> None:
    """Send what is pending without waiting (a deadline is near; an idle local process)."""
    if _store_configured() and c.pending_since() is not None:
        _push(c, 0.0)


def _probe(c: ContainerMetrics, budget_s: float) -> bool:
    """The database health check's round trip, carrying the due deltas with it when the
    store's connection is idle: True when it did (the database answered). False when not
    carried (nothing due, a flush is running, or the store is a separate metrics database
    (`ops.db.separate_store`): a round trip there says nothing of this one, and the flush
    goes at the end of the invocation by the policy): the check sends its own `SELECT 1`,
    so that it never waits behind a flush.

    Raises when the database did not answer. A server that answers with an error
    (a statement timeout on a locked metrics row, say) is up: the check passes and
    the deltas stay pending.
    """
    c.probed = not separate_store()  # this round trip could carry the flush
    c.probe_db = None
    box = c.outbox_if_any()
    carry = c.probed and _store_configured() and due(c)
    if not (carry and (box is None or box.in_flight is None)):
        return False
    c.probe_db = c.database()
    result = _push(c, budget_s, wait_busy=False)
    if result.answered or result.outcome == store.FlushOutcome.STORED:
        return True
    if result.outcome == store.FlushOutcome.PENDING:  # no reply within the budget
        raise DatabaseUnavailable(result.error) from TimeoutError(result.error)
    if result.outcome != store.FlushOutcome.BUSY:  # busy: started meanwhile, not waited for
        raise DatabaseUnavailable(result.error or result.outcome) from result.exception
    c.probe_db = None
    return False


def _before_exit(c: ContainerMetrics, budget_s: float) -> bool:
    """Everything pending, within `budget_s` (shutdown, deadline). True when stored.

    Waits for a running flush first (its batches may settle as stored), then sends the
    rest. A kept connection that has not answered within FRESH_AFTER of the budget, or
    twice the last flush's reply time if longer (an idle connection a NAT or proxy
    dropped without a word), is dropped and the batches are sent once more on a fresh
    one; the server skips batches it already stored. On a link too slow for that within
    the budget, the kept connection is waited for.
    What cannot be stored in time is logged and counted (EMF carries the count to
    CloudWatch: the database may be what is down), apart by what is known of it:
    `unconfirmed` (sent without a reply: may have been stored) or `lost` (never stored).
    """
    started = time.monotonic()
    deadline = started + budget_s
    _emit(c)
    if not _store_configured():
        c.pending.take_deltas()
        return True
    box = c.outbox
    box.add(c.pending.take_deltas())
    fresh_at = started + max(budget_s * FRESH_AFTER, 2 * (box.reply_s or 0.0))
    error: str | None = None
    fresh = fresh_at >= deadline  # the one fresh connection: tried, or out of reach
    while box.batches:
        if time.monotonic() >= deadline:
            error = error or f"not stored within {round(budget_s * 1000)} ms"
            break
        job = box.start(c.database(), time.time(), lambda r: report(c, r, failures=False))
        if isinstance(job, store.FlushResult):  # busy: a flush handed over earlier runs
            if box.in_flight is None:
                continue
            job = box.in_flight
        if not job.done.wait(max(0.0, (deadline if fresh else fresh_at) - time.monotonic())):
            if fresh:
                error = f"no reply within {round(budget_s * 1000)} ms"
                break
            fresh = True
            c.database().discard()  # wakes the job: it settles as unknown, the batches sealed
            job.done.wait(max(0.0, deadline - time.monotonic()))
            continue
        if job.result.stored:
            continue
        error = job.result.error or job.result.outcome
        if job.result.outcome == store.FlushOutcome.UNKNOWN and not fresh:
            fresh = True  # the kept connection broke: resend once on a fresh one
            continue
        break
    if not box.batches:
        return True
    with box.lock:  # given up on: reported once, here, and never sent later
        given_up = [b for b in box.batches if not b.sending]
        # Sent without a reply (sealed, or in the job still running): maybe stored.
        unconfirmed = sum(b.series for b in box.batches if b.sealed or b.sending)
        lost = sum(b.series for b in given_up if not b.sealed)
        box.batches = [b for b in box.batches if b.sending]
    for reason, series in (("lost", lost), ("unconfirmed", unconfirmed)):
        if series:
            with using(c):
                m.METRICS_DELTAS_DROPPED.labels(function=function_name(), reason=reason).inc(series)
    logger.error(
        "metrics deltas not confirmed stored before the container ended (lostSeries: never"
        " stored; unconfirmedSeries: sent without a reply, maybe stored)",
        extra={
            "type": "metrics_flush",
            "status": "lost" if lost else "unconfirmed",
            "lostSeries": lost,
            "unconfirmedSeries": unconfirmed,
            "error": error,
        },
    )
    _emit(c)  # the count reaches CloudWatch; the database is what just failed
    c.pending.take_deltas()
    return False
