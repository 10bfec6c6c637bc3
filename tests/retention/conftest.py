"""Fixtures of the retention tests: a clean slate, and a table partitioned by day."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.db import SQL
from tests.support.retention import clean_slate


@pytest.fixture
def retention_slate(db_env: str, sql: SQL, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test database with no rows in the policy tables and no retention history.

    Use with `pytestmark = pytest.mark.usefixtures("retention_slate")`.
    """
    clean_slate(sql, monkeypatch)


@pytest.fixture
def daily_partitions(sql: SQL) -> Iterator[datetime]:
    """retention_daily: one partition per day from D-35 to D+1 (D = today's midnight)."""
    sql("DROP TABLE IF EXISTS retention_daily")
    sql(
        "CREATE TABLE retention_daily (id bigint GENERATED ALWAYS AS IDENTITY, "
        "received_at timestamptz NOT NULL, PRIMARY KEY (id, received_at)) "
        "PARTITION BY RANGE (received_at)"
    )
    sql("CREATE INDEX ON retention_daily (received_at)")
    d: datetime = sql("SELECT date_trunc('day', now())")[0][0]
    for n in range(-35, 2):
        lo, hi = d + timedelta(days=n), d + timedelta(days=n + 1)
        sql(
            f"CREATE TABLE retention_daily_{n + 35:02d} PARTITION OF retention_daily "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
    yield d
    sql("DROP TABLE IF EXISTS retention_daily")
