"""The `Api` every API function starts from: the router with the layer's hooks wired in.

    from ops.wiring import service_api
    app = service_api()

* the invocation's deadline, which the checks fit their budgets to (ops.deadline);
* bearer token for routes registered with `auth=True` (ops.auth);
* HTTP metrics for every response, the flush policy, the deadline and shutdown
  flushes (ops.metrics.router_hooks); the health checks' results recorded, and the database
  check carrying the due flush in its round trip (ops.checks' hooks);
* the router's 500s reported to Sentry when a DSN is configured (ops.error_tracking);
* one OpenTelemetry span per invocation when tracing is on (ops.tracing);
* the request lines of probe routes sampled when PROBE_LOG_SAMPLE_RATE < 1
  (ops.log.ProbeLogSampling; the probe routes are ops.metrics.catalogue's PROBE_ROUTES).

The router (ops.api) stays ignorant of all six; they depend on it, never the reverse.
(Was `ops.wiring`, which still imports, with a DeprecationWarning.)
"""

from __future__ import annotations

from ops import checks, deadline, error_tracking, tracing
from ops.api import Api
from ops.auth import unauthorized_response
from ops.config import settings
from ops.log import ProbeLogSampling
from ops.metrics import process_hooks
from ops.metrics.catalogue import PROBE_ROUTES
from ops.metrics.router_hooks import CarriedFlush, record_check
from ops.metrics.router_hooks import instrument as record_metrics


def service_api() -> Api:
    app = Api()
    app.before_invocation.append(deadline.begin)  # checks fit their budgets to it
    app.after_invocation.append(deadline.end)
    app.authorize = unauthorized_response
    record_metrics(app)  # http_requests_total etc. for every response, then the metrics flush
    # The checks' results recorded; the database check carries the due flush.
    checks.wire(round_trip=CarriedFlush(), on_result=(record_check,))
    error_tracking.instrument(app)  # reports the 500s when a Sentry DSN is configured
    tracing.instrument(app)  # last: its span ends after the metrics flush (when tracing is on)
    rate = settings().probe_log_sample_rate
    if rate < 1.0:  # off: nothing per request
        sampling = ProbeLogSampling(frozenset(PROBE_ROUTES), rate)
        app.request_log_sampling = sampling
        process_hooks.at_shutdown(sampling.summarise)  # what no written line stands for
    return app
