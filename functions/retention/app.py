"""Scheduled retention run: prunes the policy tables, audits every prune.

Events (events/README.md): Scheduler's input, a classic scheduled event, `{}` for a manual
run, `{"dryRun": true}` to report without deleting; `tables` limits a run to some policies.
"""

from __future__ import annotations

from typing import Any

from ops.error_tracking import report_failures
from ops.log import logger
from ops.metrics import flush, install_shutdown_flush
from ops.tracing import traced_invocation
from retention.run import run_retention

install_shutdown_flush()  # at init: Lambda accepts the extension registration only then


@logger.inject_lambda_context(clear_state=True)
@traced_invocation("retention run")  # one span with the batches inside, when tracing is on
@report_failures("retention")  # a failed run reaches Sentry when a DSN is configured
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        return run_retention(event, context)  # on a connection of its own, sized for batches
    finally:
        flush()  # not an ops.api.Api function: the flush is ours to call; it never raises
