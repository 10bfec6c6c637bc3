"""Timing knobs of the retention run (declared, read and checked in ops.config; policies:
ops.retention_policies).

RETENTION_LOCK_TIMEOUT_MS       500     lock_timeout of every batch and partition drop
RETENTION_STATEMENT_TIMEOUT_MS  10000   statement_timeout of every batch statement (at most)
RETENTION_DEADLINE_MARGIN_MS    30000   stop starting work a quarter of the invocation's
                                        time before the Lambda deadline, at most this long
RETENTION_LEASE_TTL_MS          60000   how long a crashed run blocks the next one
RETENTION_BATCH_TARGET_MS       50      how long one batch's transaction should take
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.config import Settings, settings


@dataclass(frozen=True)
class JobSettings:
    lock_timeout_ms: int = Settings.retention_lock_timeout_ms
    statement_timeout_ms: int = Settings.retention_statement_timeout_ms
    deadline_margin_ms: int = Settings.retention_deadline_margin_ms
    lease_ttl_ms: int = Settings.retention_lease_ttl_ms
    batch_target_ms: int = Settings.retention_batch_target_ms

    @property
    def lease_wait_ms(self) -> int:
        """A busy lease is waited on this long: enough to see a crashed holder's lease expire."""
        return self.lease_ttl_ms + 2_000


def job_settings() -> JobSettings:
    """The container's knobs; ops.config has checked each and that they fit together."""
    cfg = settings()
    return JobSettings(
        lock_timeout_ms=cfg.retention_lock_timeout_ms,
        statement_timeout_ms=cfg.retention_statement_timeout_ms,
        deadline_margin_ms=cfg.retention_deadline_margin_ms,
        lease_ttl_ms=cfg.retention_lease_ttl_ms,
        batch_target_ms=cfg.retention_batch_target_ms,
    )
