"""PgBouncer's client limit: the stock `max_client_conn` (100) refuses a large fleet's
containers past it; the setting docs/capacity.md ships admits them, and is the one the
fleet benchmark runs with (`benchmarks.suite_fleet.MAX_CLIENT_CONN`)."""

from __future__ import annotations

import re
from contextlib import ExitStack

import pg8000.native
import pytest

from benchmarks.fleet_plan import MAX_CLIENT_CONN
from tests.support.binaries import require_binary
from tools import ROOT
from tools.localdb import pgbouncer
from tools.localdb.pgbouncer import PgBouncer
from tools.localdb.pgcluster import SUPERUSER, PgCluster

CLIENTS = 120  # past the stock limit


def _open_clients(proxy: PgBouncer, stack: ExitStack) -> int:
    """Open CLIENTS connections through `proxy`, each answering a query; how many did."""
    for opened in range(CLIENTS):
        try:
            conn = pg8000.native.Connection(
                SUPERUSER,
                password=proxy.cluster.password,
                host="127.0.0.1",
                port=proxy.port,
                database=pgbouncer.DATABASE,
                timeout=10,
            )
        except pg8000.native.DatabaseError as exc:
            assert "max_client_conn" in str(exc)
            return opened
        stack.callback(conn.close)
        assert conn.run("SELECT 1") == [[1]]
    return CLIENTS


@pytest.mark.parametrize("limit", [None, MAX_CLIENT_CONN], ids=["stock", "shipped"])
def test_client_limit(pg_cluster: PgCluster, limit: int | None) -> None:
    require_binary("pgbouncer")
    proxy = PgBouncer(pg_cluster, "postgres", max_client_conn=limit)
    proxy.start()
    try:
        with ExitStack() as stack:
            opened = _open_clients(proxy, stack)
    finally:
        proxy.stop()
    if limit is None:
        assert opened < CLIENTS  # the stock limit refuses a fleet of this size
    else:
        assert opened == CLIENTS


def test_capacity_doc_ships_the_setting_the_benchmark_uses() -> None:
    doc = (ROOT / "docs" / "capacity.md").read_text()
    assert re.findall(r"^max_client_conn = (\d+)", doc, re.M) == [str(MAX_CLIENT_CONN)]
