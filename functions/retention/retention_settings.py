"""Timing knobs of the retention run, from the environment (policies: ops.retention_policies).

RETENTION_LOCK_TIMEOUT_MS       500     lock_timeout of every batch and partition drop
RETENTION_STATEMENT_TIMEOUT_MS  10000   statement_timeout of every batch
RETENTION_DEADLINE_MARGIN_MS    30000   stop starting work this long before the Lambda deadline
RETENTION_LEASE_TTL_MS          60000   how long a crashed run blocks the next one
RETENTION_BATCH_TARGET_MS       50      how long one batch's transaction should take
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.config import env_int


@dataclass(frozen=True)
class JobSettings:
    lock_timeout_ms: int = 500
    statement_timeout_ms: int = 10_000
    deadline_margin_ms: int = 30_000
    lease_ttl_ms: int = 60_000
    batch_target_ms: int = 50

    @property
    def lease_wait_ms(self) -> int:
        """A busy lease is waited on this long: enough to see a crashed holder's lease expire."""
        return self.lease_ttl_ms + 2_000


def job_settings() -> JobSettings:
    cfg = JobSettings(
        lock_timeout_ms=env_int("RETENTION_LOCK_TIMEOUT_MS", JobSettings.lock_timeout_ms),
        statement_timeout_ms=env_int(
            "RETENTION_STATEMENT_TIMEOUT_MS", JobSettings.statement_timeout_ms
        ),
        deadline_margin_ms=env_int("RETENTION_DEADLINE_MARGIN_MS", JobSettings.deadline_margin_ms),
        lease_ttl_ms=env_int("RETENTION_LEASE_TTL_MS", JobSettings.lease_ttl_ms),
        batch_target_ms=env_int("RETENTION_BATCH_TARGET_MS", JobSettings.batch_target_ms),
    )
    # A batch started just before the margin must end (or be cancelled) before the deadline,
    # and a live holder must renew its lease before it can expire between two statements.
    if cfg.deadline_margin_ms <= cfg.statement_timeout_ms:
        raise ValueError(
            "RETENTION_DEADLINE_MARGIN_MS must exceed RETENTION_STATEMENT_TIMEOUT_MS "
            f"({cfg.deadline_margin_ms} <= {cfg.statement_timeout_ms})"
        )
    if cfg.batch_target_ms >= cfg.statement_timeout_ms:
        raise ValueError(
            "RETENTION_BATCH_TARGET_MS must be below RETENTION_STATEMENT_TIMEOUT_MS "
            f"({cfg.batch_target_ms} >= {cfg.statement_timeout_ms})"
        )
    if cfg.lease_ttl_ms <= cfg.statement_timeout_ms + cfg.lock_timeout_ms:
        raise ValueError(
            "RETENTION_LEASE_TTL_MS must exceed the statement and lock timeouts together "
            f"({cfg.lease_ttl_ms} <= {cfg.statement_timeout_ms} + {cfg.lock_timeout_ms})"
        )
    return cfg
