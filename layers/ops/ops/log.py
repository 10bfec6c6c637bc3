"""One Powertools Logger for every function, and the request log line.

Log lines are JSON with Powertools' standard keys (level, message, timestamp,
service, cold_start, function_name, correlation_id, ...) plus our own `type`
field, which the Logs Insights queries filter on: `request`, `job`,
`retention`, `metrics_flush`, `health_check`, `error`.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from ops.config import settings

# Every function imports this module first: a bad setting fails the container here, at start.
_cfg = settings()
logger = Logger(service=_cfg.service, level=_cfg.effective_log_level)


def log_request(
    *,
    method: str,
    url: str,
    route: str,
    status: int,
    duration_ms: float,
    request_id: str | None,
) -> None:
    """The one structured line per API call (field names as the runbook queries them)."""
    logger.info(
        "request",
        extra={
            "type": "request",
            "method": method,
            "url": url,
            "route": route,  # the template: group by this, not by url (cardinality)
            "statusCode": status,
            "duration": round(duration_ms, 3),
            "requestId": request_id,
        },
    )
