"""The one spelling of a time in health responses, retention run keys and audit payloads:
RFC 3339 in UTC with `Z` (`2026-01-29T12:00:00.000Z`), the form of the log lines' `time`
key too (ops.log), so that operators compare like with like."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, overload

Timespec = Literal["auto", "seconds", "milliseconds", "microseconds"]


@overload
def utc_iso(value: datetime, timespec: Timespec = "auto") -> str: ...
@overload
def utc_iso(value: None, timespec: Timespec = "auto") -> None: ...
def utc_iso(value: datetime | None, timespec: Timespec = "auto") -> str | None:
    """`value` in UTC with `Z`; a naive value (a `timestamp` column) as it is; None as None."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now(timespec: Timespec = "milliseconds") -> str:
    return utc_iso(datetime.now(UTC), timespec)
