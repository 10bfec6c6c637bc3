"""Error tracking with Sentry: optional, and free when off.

Off unless a DSN is configured (SENTRY_DSN locally, SENTRY_DSN_SECRET_ARN in AWS).
Off, this module costs one cached settings lookup per container: `sentry_sdk` is
imported by `start()` only once a DSN is configured. On, every function reports
  - a route handler's exception that `ops.api.Api` answers with a 500 (the router
    catches it, so no Lambda-level wrapper would ever see it): `instrument(app)`;
  - an exception escaping any other handler (the retention job): `report_failures`;
each with the request id (the logs' correlation id), route, function name, release
and environment, scrubbed by `ops.event_scrubber`, and flushed before the invocation
returns: Lambda freezes the container after it, and a queued event would wait for
the next invocation or be lost with the container.

In Lambda, the SDK's AwsLambdaIntegration adds what only the runtime can give: a
timeout warning shortly before the deadline (the runtime kills a timed-out
invocation, so nothing else could report it), errors raised while the function
initialises, per-invocation traces when SENTRY_TRACES_SAMPLE_RATE > 0, and a drain of
the queue before each result is posted. Its own capture of an exception escaping the
handler is the same exception object `report_failures` already sent, which the SDK's
DedupeIntegration drops: one event per failure.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ops.config import is_sentry_dsn, settings
from ops.log import logger

if TYPE_CHECKING:
    from ops.api import Api, Request
    from ops.config import Settings

FLUSH_TIMEOUT_S = 2.0  # the longest an invocation waits for its error report to leave

_started: bool | None = None
F = TypeVar("F", bound=Callable[..., Any])


def start() -> bool:
    """Initialise the SDK once per container if a DSN is configured; True when on.

    Never raises: an unreadable or malformed DSN secret leaves error tracking off and
    says so in the log, and the function runs as it would without it. (A malformed
    SENTRY_DSN or sample rate fails the container at start, as every bad setting does.)"""
    global _started
    if _started is None:
        _started = _start()
    return _started


def _start() -> bool:
    cfg = settings()
    if not cfg.error_tracking_configured:
        return False
    dsn = cfg.sentry_dsn or _dsn_from_secret(str(cfg.sentry_dsn_secret_arn))
    if dsn is None:
        return False

    import sentry_sdk
    from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration
    from sentry_sdk.integrations.dedupe import DedupeIntegration

    from ops.event_scrubber import EventScrubber

    scrubber = EventScrubber(_known_secrets(cfg))
    sentry_sdk.init(
        dsn=dsn,
        release=f"{cfg.service}@{cfg.version}",
        environment=cfg.environment,
        sample_rate=cfg.sentry_sample_rate,
        traces_sample_rate=cfg.sentry_traces_sample_rate
        or None,  # None: no tracing machinery at all
        send_default_pii=False,
        include_local_variables=False,  # frame locals hold connection parameters
        max_request_body_size="never",
        # Only what is used, for cold start (init 20 -> 3 ms measured) and for what is sent:
        # no log lines as events or breadcrumbs (the router and the job report their errors
        # once, the logs keep the rest by request id), no package list, no argv, no
        # process-wide excepthook/atexit (every report is flushed before its invocation
        # returns). Dedupe drops AwsLambdaIntegration's second capture of a job's failure.
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[AwsLambdaIntegration(timeout_warning=True), DedupeIntegration()],
        # The SDK types events as a TypedDict; the scrubber treats them as the dicts they are.
        before_send=scrubber.before_send,  # type: ignore[arg-type]
        before_send_transaction=scrubber.before_send,  # type: ignore[arg-type]
        before_breadcrumb=scrubber.before_breadcrumb,
    )
    sentry_sdk.set_tag("function_name", cfg.function_name)
    sentry_sdk.set_tag("service", cfg.service)
    logger.info(
        "error tracking on",
        extra={
            "type": "error_tracking",
            "sampleRate": cfg.sentry_sample_rate,
            "tracesSampleRate": cfg.sentry_traces_sample_rate,
        },
    )
    return True


def _dsn_from_secret(arn: str) -> str | None:
    from ops.secretstore import get_secret  # boto3: only when the DSN is a secret

    try:
        dsn = get_secret(arn).strip()
    except Exception as exc:  # the secret's text never goes to the log
        _disabled("the DSN secret could not be read", type(exc).__name__)
        return None
    if not is_sentry_dsn(dsn):
        _disabled("the DSN secret is not a Sentry DSN", "https://<key>@<host>/<project id>")
        return None
    return dsn


def _known_secrets(cfg: Settings) -> list[str | None]:
    """Exact strings to scrub wherever they appear: the token, the database URLs and their
    passwords."""
    from urllib.parse import urlsplit

    found: list[str | None] = [cfg.metrics_token]
    for url in (cfg.database_url, cfg.metrics_database_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            found += [url, password]
    return found


def _disabled(reason: str, detail: str) -> None:
    logger.error(
        f"error tracking off: {reason}",
        extra={"type": "error_tracking", "status": "disabled", "error": detail},
    )


def capture(exc: BaseException, *, request_id: str | None, route: str, method: str | None) -> None:
    """Send one exception with the invocation's identity (call only when started).

    Marked unhandled, as the SDK's own integrations mark an exception that escaped the
    application's code: the router's 500 and a failed job are crashes, not caught errors."""
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception

    event, hint = event_from_exception(
        exc,
        client_options=sentry_sdk.get_client().options,
        mechanism={"type": "ops", "handled": False},
    )
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id or "unknown")
        scope.set_tag("route", route)
        if method:
            scope.set_tag("method", method)
        scope.set_transaction_name(f"{method} {route}" if method else route)
        sentry_sdk.capture_event(event, hint=hint)


def flush() -> None:
    """Wait (at most FLUSH_TIMEOUT_S) for queued reports to leave before Lambda freezes."""
    import sentry_sdk

    started = time.perf_counter()
    sentry_sdk.flush(timeout=FLUSH_TIMEOUT_S)
    if time.perf_counter() - started >= FLUSH_TIMEOUT_S:
        logger.warning(
            "error report not confirmed sent: the Sentry ingest was unreachable or slow",
            extra={"type": "error_tracking", "status": "flush_timeout"},
        )


def instrument(app: Api) -> None:
    """Report the router's 500s (handler exceptions); a no-op while error tracking is off."""
    if not start():
        return
    failed = False

    def on_error(req: Request | None, route: str, exc: Exception) -> None:
        nonlocal failed
        failed = True
        capture(
            exc,
            request_id=req.request_id if req else None,
            route=route,
            method=req.method if req else None,
        )

    def after_invocation() -> None:
        nonlocal failed
        if failed:
            failed = False
            flush()

    app.error_hooks.append(on_error)
    app.after_invocation.append(after_invocation)


def report_failures(job: str) -> Callable[[F], F]:
    """For handlers outside ops.api.Api (`job` names them in the `route` tag): an
    escaping exception is reported, flushed and re-raised, so that retries and
    dead-letter queues still see it. While error tracking is off the handler is
    returned as it is."""

    def decorate(handler: F) -> F:
        if not start():
            return handler

        @functools.wraps(handler)
        def reporting(event: Any, context: Any) -> Any:
            try:
                return handler(event, context)
            except Exception as exc:
                capture(
                    exc, request_id=getattr(context, "aws_request_id", None), route=job, method=None
                )
                flush()
                raise

        return reporting  # type: ignore[return-value]

    return decorate
