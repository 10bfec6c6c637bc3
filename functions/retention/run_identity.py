"""What identifies a retention run across deliveries of its event.

Delivery is at least once, so the run key must be the same for every delivery of
the same run and different for different runs:

- EventBridge Scheduler (the template's target input): schedule ARN + scheduled
  time. The execution id changes on every attempt, so it is logged, not keyed on.
- The classic EventBridge scheduled event (`sam local generate-event cloudwatch
  scheduled-event`): its `id`.
- Anything else (a manual invocation, `{}` or `{"dryRun": true}`): an explicit
  `runId` if given, else the Lambda request id (the same for Lambda's own retries
  of an asynchronous invocation).

A Lambda on-failure destination record (what the dead-letter queue holds for a run
that raised every retry) stands for its original event: invoking the function with
it re-drives that run, which resumes where it stopped.

Optional keys in any event: `dryRun` (boolean), `tables` (a subset of the policy tables).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ops.log import bounded
from ops.timestamps import utc_iso
from retention.model import EventError, RunIdentity, Trigger

_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_UNSUBSTITUTED = "<aws.scheduler."


def _required_str(event: dict[str, Any], name: str, shape: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"{shape} event lacks {name!r}")
    if _UNSUBSTITUTED in value:
        raise EventError(
            f"{shape} event has an unsubstituted {name!r} ({bounded(value)});"
            " check the schedule's Input"
        )
    return value.strip()


def _utc_iso(value: str, name: str) -> str:
    """One spelling per instant, so `...Z` and `...+00:00` name the same run."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EventError(f"{name} is not an ISO 8601 timestamp: {bounded(repr(value))}") from None
    if parsed.tzinfo is None:
        raise EventError(f"{name} has no time zone: {bounded(repr(value))}")
    return utc_iso(parsed)


def _tables(event: dict[str, Any]) -> tuple[str, ...] | None:
    tables = event.get("tables")
    if tables is None:
        return None
    if not isinstance(tables, list) or not tables or not all(isinstance(t, str) for t in tables):
        raise EventError("tables must be a non-empty list of table names")
    return tuple(tables)


def _is_destination_record(event: dict[str, Any]) -> bool:
    return "requestPayload" in event and "responseContext" in event


def identify(event: Any, request_id: str) -> RunIdentity:
    if event is None:
        event = {}
    if isinstance(event, dict) and _is_destination_record(event):
        event = event["requestPayload"]
    if not isinstance(event, dict):
        raise EventError(f"the event must be a JSON object, got {type(event).__name__}")
    dry_run = event.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise EventError(f"dryRun must be true or false, got {bounded(repr(dry_run))}")

    attempt = execution = None
    if event.get("source") == "scheduler":
        arn = _required_str(event, "scheduleArn", "Scheduler")
        when = _utc_iso(_required_str(event, "scheduledTime", "Scheduler"), "scheduledTime")
        key, trigger = f"scheduler:{arn}@{when}", Trigger.SCHEDULER
        attempt = str(event.get("attemptNumber") or "") or None
        execution = str(event.get("executionId") or "") or None
    elif event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event":
        key, trigger = f"event:{_required_str(event, 'id', 'EventBridge')}", Trigger.EVENTBRIDGE
    elif "runId" in event:
        run_id = event["runId"]
        if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
            raise EventError(
                "runId must be 1-128 characters of letters, digits and ._:@/- "
                f"(starting with a letter or digit), got {bounded(repr(run_id))}"
            )
        key, trigger = f"manual:{run_id}", Trigger.MANUAL
    else:
        key, trigger = f"manual:{request_id}", Trigger.MANUAL

    return RunIdentity(
        key=f"dry-run:{key}" if dry_run else key,
        trigger=trigger,
        dry_run=dry_run,
        tables=_tables(event),
        attempt_number=attempt,
        execution_id=execution,
    )
