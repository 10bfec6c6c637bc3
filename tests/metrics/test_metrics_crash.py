"""A counter never goes down because the database crashed (issue 18, item 3).

A flush is acknowledged only once its commit is durable, so a scrape can never serve a
value that a crash then takes back. On a cluster of the test's own (it is crashed):
record, flush, scrape, `pg_ctl -m immediate` at once, restart, scrape again: every
counter, bucket, sum and count at least what the first scrape served. Twice: with
PostgreSQL's durable defaults (as on RDS), and with `synchronous_commit=off` server-wide
(the flush must turn it on for itself). Before migration 008, both lost the flush in the
first trial.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.db import runner
from tests.support.metrics import counters_and_buckets, metrics_database, scrape_samples, value
from tests.support.runtime import AppEnv, reset_runtime
from tools.localdb.pgcluster import PgCluster, running_cluster

pytestmark = pytest.mark.db  # a PostgreSQL of its own (not the session fixture)

TRIALS = 5


@pytest.fixture(params=[True, False], ids=["durable-server", "async-server"])
def crash_database(request: pytest.FixtureRequest) -> Iterator[tuple[PgCluster, str]]:
    with running_cluster(durable=request.param) as cluster:
        url = metrics_database(cluster, "crash")
        from ops.db import connect_url

        conn = connect_url(url)
        try:  # the schema itself must survive the crash when commits are asynchronous
            runner(conn)("CHECKPOINT")
        finally:
            conn.close()
        yield cluster, url


def test_a_scraped_counter_survives_an_immediate_stop(
    crash_database: tuple[PgCluster, str], app_env: AppEnv
) -> None:
    from ops.metrics import catalogue as m
    from ops.metrics import flush

    cluster, url = crash_database
    app_env(DATABASE_URL=url)
    for trial, recorded in enumerate(range(1, TRIALS + 1)):
        m.WEBHOOK_FAILURES.labels(source="crash").inc()
        assert flush(), f"trial {trial}: the flush was not acknowledged"
        served = scrape_samples()
        assert value(served, "webhook_failures_total", source="crash") == recorded
        cluster.stop("immediate")  # what was acknowledged must already be on disk
        cluster.start()
        cluster.wait_ready()
        reset_runtime()  # a new container: no deltas carried over, a new connection

        after = scrape_samples()
        lower = {
            key: (before, after.get(key))
            for key, before in counters_and_buckets(served).items()
            if after.get(key, 0.0) < before
        }
        assert not lower, f"trial {trial}: went down after the crash: {lower}"
        assert value(after, "webhook_failures_total", source="crash") == recorded
