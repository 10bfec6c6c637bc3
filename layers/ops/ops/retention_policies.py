"""Retention policies: which table, by which timestamp column, how old, in batches of how many.

Read from `RETENTION_POLICIES` (JSON), else the defaults below. Shared by the
retention function (which prunes) and the metrics function (whose live gauges
report each policy table's oldest row), so this module imports only the stdlib (and ops.config).

    RETENTION_POLICIES='[{"table": "inbound_events", "column": "received_at",
                          "maxAgeDays": 30, "batchSize": 25000}]'

Validation here is static (identifier shape, positive ages, the audit table
refused); the retention function checks the catalog (the table exists, the
column is a timestamp) before it deletes anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ops.config import settings

ENV_VAR = "RETENTION_POLICIES"
AUDIT_TABLE = "audit_logs"
# The most rows one batch deletes (batches aim at ~50 ms; benchmarks/README.md: 25,000 rows
# take 10-40 ms, and each batch costs ~1 ms of round trips and bookkeeping on top).
DEFAULT_BATCH_SIZE = 25_000
MAX_BATCH_SIZE = 50_000
MAX_AGE_DAYS = 36_500

# Plain lower-case SQL identifiers only (optionally schema-qualified): nothing that
# needs quoting, so a name cannot smuggle SQL and means the same to us and to the catalog.
_IDENT = r"[a-z_][a-z0-9_]{0,62}"
_TABLE_RE = re.compile(rf"(?:{_IDENT}\.)?{_IDENT}")
_COLUMN_RE = re.compile(_IDENT)
_KEYS = {"table", "column", "maxAgeDays", "batchSize"}


class PolicyError(ValueError):
    """A retention policy is invalid; nothing may be deleted."""


@dataclass(frozen=True)
class Policy:
    table: str
    column: str
    max_age_days: int
    batch_size: int


DEFAULT_POLICIES: tuple[Policy, ...] = (
    Policy("inbound_events", "received_at", 30, DEFAULT_BATCH_SIZE),
    Policy("chat_sessions", "updated_at", 90, DEFAULT_BATCH_SIZE),
)


def _int_in_range(value: Any, name: str, where: str, low: int, high: int) -> int:
    # bool is an int in Python; `true` days is a typo, not a policy.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(f"{where}: {name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _policy(raw: Any, index: int) -> Policy:
    where = f"{ENV_VAR}[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    table, column = raw.get("table"), raw.get("column")
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
        raise PolicyError(
            f"{where}: table must be a lower-case identifier (optionally schema.table), "
            f"got {table!r}"
        )
    if table.rsplit(".", 1)[-1] == AUDIT_TABLE:
        raise PolicyError(f"{where}: {table} is the audit log, which is never pruned")
    if table.split(".", 1)[0].startswith("pg_") or table.startswith("information_schema."):
        raise PolicyError(f"{where}: {table} is a system table")
    if not isinstance(column, str) or not _COLUMN_RE.fullmatch(column):
        raise PolicyError(f"{where}: column must be a lower-case identifier, got {column!r}")
    return Policy(
        table=table,
        column=column,
        max_age_days=_int_in_range(raw.get("maxAgeDays"), "maxAgeDays", where, 1, MAX_AGE_DAYS),
        batch_size=_int_in_range(
            raw.get("batchSize", DEFAULT_BATCH_SIZE), "batchSize", where, 1, MAX_BATCH_SIZE
        ),
    )


def parse_policies(text: str) -> list[Policy]:
    """Policies from their JSON text; raises PolicyError on anything invalid."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{ENV_VAR} is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise PolicyError(f"{ENV_VAR} must be a non-empty JSON array of policies")
    policies = [_policy(item, i) for i, item in enumerate(raw)]
    seen: set[str] = set()
    for p in policies:
        if p.table in seen:
            raise PolicyError(f"{ENV_VAR}: table {p.table} has more than one policy")
        seen.add(p.table)
    return policies


@lru_cache(maxsize=4)
def _cached(text: str) -> tuple[Policy, ...]:
    return tuple(parse_policies(text))


def load_policies() -> list[Policy]:
    """The configured policies (env `RETENTION_POLICIES`), else the defaults."""
    text = settings().retention_policies
    return list(_cached(text) if text else DEFAULT_POLICIES)
