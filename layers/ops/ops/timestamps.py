"""The one spelling of a time in health responses, retention run keys and audit payloads:
RFC 3339 in UTC with `Z` (`2026-01-29T12:00:00.000Z`), the form of the log lines' `time`
key too (ops.log), so that operators compare like with like.

And an exact reading of PostgreSQL timestamps, for connections that register it
(`read_timestamps_exactly`; the retention run's does): a `datetime` when Python's can hold
the value exactly, else the server's own text (`-infinity`, `infinity`, a BC date, a year
after 9999, a year-1 value whose offset leaves Python's range, any DateStyle but ISO).
pg8000's own reader guesses with dateutil when its pattern fails: it reads
`0044-03-15 12:00:00 BC` as the year 44 AD, and `06.11.2026` (DateStyle German) as 11 June.
Text is never misread, and sent back as a parameter (cast to the column's type) it is the
very same value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Literal, overload

if TYPE_CHECKING:  # health imports this module and need not load the driver
    import pg8000.native

Timespec = Literal["auto", "seconds", "milliseconds", "microseconds"]
# A timestamp as read from PostgreSQL: see the module docstring.
PgTimestamp = datetime | str

TIMESTAMP_OID = 1114
TIMESTAMPTZ_OID = 1184
# What the server prints with DateStyle ISO; anything else (BC, 5-digit years, other
# DateStyles) stays text.
_ISO = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?)"
    r"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?"
)


def _read(text: str, aware: bool) -> PgTimestamp:
    match = _ISO.fullmatch(text)
    if match is None or (match[2] is not None) != aware:
        return text
    stamp, sign, hours, minutes, seconds = match.groups()
    pattern = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
    try:
        value = datetime.strptime(stamp, pattern)
        if not aware:
            return value
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
        value = value.replace(tzinfo=timezone(-offset if sign == "-" else offset))
        value.astimezone(UTC)  # in range in UTC too, or text
    except (ValueError, OverflowError):
        return text
    return value


def read_timestamp(text: str) -> PgTimestamp:
    """A `timestamp` (without time zone) value: a naive datetime, or the server's text."""
    return _read(text, aware=False)


def read_timestamptz(text: str) -> PgTimestamp:
    """A `timestamptz` value: an aware datetime, or the server's text."""
    return _read(text, aware=True)


def read_timestamps_exactly(conn: pg8000.native.Connection) -> None:
    """Make `conn` read timestamps with the readers above instead of pg8000's."""
    conn.register_in_adapter(TIMESTAMP_OID, read_timestamp)
    conn.register_in_adapter(TIMESTAMPTZ_OID, read_timestamptz)


@overload
def utc_iso(value: datetime | str, timespec: Timespec = "auto") -> str: ...
@overload
def utc_iso(value: None, timespec: Timespec = "auto") -> None: ...
def utc_iso(value: PgTimestamp | None, timespec: Timespec = "auto") -> str | None:
    """`value` in UTC with `Z`; a naive value (a `timestamp` column) as it is; None as None;
    text (a value no datetime holds, as PostgreSQL spelled it) as it is."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now(timespec: Timespec = "milliseconds") -> str:
    return utc_iso(datetime.now(UTC), timespec)
