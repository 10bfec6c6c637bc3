"""One Powertools Logger for every function, and the request log line.

Log lines are JSON with Powertools' standard keys (level, time, message,
service, cold_start, function_name, correlation_id, ...) plus our own `type`
field, which the Logs Insights queries filter on: `request`, `job`,
`retention`, `metrics_flush`, `health_check`, `error`, `request_sampling`.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from ops.config import settings

if TYPE_CHECKING:
    from aws_lambda_powertools.logging.types import LogRecord

ECHO_LIMIT = 256  # characters of a caller's value (path, method) echoed in a log or response


def bounded(value: str, limit: int = ECHO_LIMIT) -> str:
    """A caller's value, safe to echo: at most `limit` characters, lone surrogates escaped."""
    if len(value) > limit:
        value = value[:limit] + f"…({len(value)} chars)"
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _to_json(log: Any) -> str:
    """Powertools' serializer, except that a line that cannot be UTF-8 encoded (a lone
    surrogate from a request) is written escaped instead of being lost to a logging error."""
    text = json.dumps(log, separators=(",", ":"), default=str, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(log, separators=(",", ":"), default=str)
    return text


# Every function imports this module first: a bad setting fails the container here, at start.
_cfg = settings()


class _Formatter(LambdaPowertoolsFormatter):
    """Powertools' JSON lines with the seed's `time` key: RFC 3339 in UTC with
    milliseconds and `Z` (`2026-01-29T12:00:00.000Z`), the form operators' log
    pipelines already parse, instead of Powertools' `timestamp` in Python's
    `2026-01-29 12:00:00,000+0000`."""

    def serialize(self, log: LogRecord) -> str:
        return super().serialize({("time" if k == "timestamp" else k): v for k, v in log.items()})


logger = Logger(
    service=_cfg.service,
    level=_cfg.log_level,
    logger_formatter=_Formatter(
        datefmt="%Y-%m-%dT%H:%M:%S.%FZ",  # %F: Powertools' milliseconds directive
        utc=True,
        log_record_order=["level", "timestamp", "message"],
        json_serializer=_to_json,
    ),
)


class ProbeLogSampling:
    """Which request lines of probe routes are written (PROBE_LOG_SAMPLE_RATE < 1).

    Only answers below 400 are sampled: a failing probe (a 503 in an outage, a 401) is
    always written, so the runbook's 5xx query still finds every one. Of the rest, a share
    `rate` is written, evenly spaced (a credit adds up; the container's first is written);
    a written line carries `linesRepresented` (itself plus those not written since the
    last written one), and what no written line stands for is logged once at shutdown
    (`summarise`). POWERTOOLS_LOGGER_SAMPLE_RATE does not fit: it turns DEBUG on for a
    share of invocations, it never leaves an INFO line out.
    """

    def __init__(self, routes: frozenset[str], rate: float) -> None:
        from fractions import Fraction  # only when sampling is on

        self.routes = routes
        self.rate = rate
        self._lock = threading.Lock()
        # Whole numbers: 0.1 writes exactly every tenth line, with no float drift.
        share = Fraction(rate).limit_denominator(1_000_000)
        self._step, self._whole = share.numerator, share.denominator
        self._credit = self._whole - self._step if self._step else 0  # the first is written
        self.unwritten = 0  # sampled out since the last written line

    def admit(self, route: str, status: int) -> tuple[bool, int | None]:
        """(write the line?, how many lines it stands for when sampled, else None)."""
        if route not in self.routes or status >= 400:
            return True, None
        with self._lock:
            self._credit += self._step
            if self._credit < self._whole:
                self.unwritten += 1
                return False, None
            self._credit -= self._whole
            represents, self.unwritten = self.unwritten + 1, 0
            return True, represents

    def summarise(self) -> None:
        """Log how many probe lines no written line stands for (at shutdown)."""
        with self._lock:
            unwritten, self.unwritten = self.unwritten, 0
        if unwritten:
            logger.info(
                "probe request lines not written (PROBE_LOG_SAMPLE_RATE) since the last one"
                " written",
                extra={
                    "type": "request_sampling",
                    "linesNotWritten": unwritten,
                    "sampleRate": self.rate,
                },
            )


def log_request(
    *,
    method: str,
    url: str,
    route: str,
    status: int,
    duration_ms: float,
    request_id: str | None,
    sampling: ProbeLogSampling | None = None,
) -> None:
    """The one structured line per API call (field names as the runbook queries them);
    of probe routes, a sample when `sampling` is given."""
    represents = None
    if sampling is not None:
        write, represents = sampling.admit(route, status)
        if not write:
            return
    extra: dict[str, Any] = {
        "type": "request",
        "method": bounded(method),
        "url": bounded(url),
        "route": route,  # the template: group by this, not by url (cardinality)
        "statusCode": status,
        "duration": round(duration_ms, 3),
        "requestId": request_id,
    }
    if represents is not None:
        extra["linesRepresented"] = represents
    logger.info("request", extra=extra)
