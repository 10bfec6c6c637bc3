"""Totals that are right across containers: exact sums from separate processes,
flushes that fail and lose nothing, and no double counting when a reply is lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ops.metrics import catalogue as m
from ops.metrics import current, flush, store, totals
from ops.metrics.pending import SeriesKey
from tests.support.db import SQL, PgConnect, runner
from tests.support.metrics import (
    Samples,
    counters_and_buckets,
    metrics_database,
    run_containers,
    scrape_samples,
    start_containers,
    truncate_metrics,
    value,
    wait_containers,
)
from tests.support.runtime import AppEnv, LogLines
from tools.localdb.pgcluster import PgCluster, running_cluster

MS = "tool_call_duration_seconds"


@pytest.fixture(scope="module")
def store_url(pg_cluster: PgCluster) -> str:
    return metrics_database(pg_cluster, "metrics_store")


@pytest.fixture
def metrics_env(store_url: str, app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh container pointed at this module's database, with empty metric tables."""
    from ops.db import connect_url

    conn = connect_url(store_url, timeout_s=10)
    truncate_metrics(conn.run)
    conn.close()
    app_env(DATABASE_URL=store_url)
    return store_url


@pytest.fixture
def own_sql(metrics_env: str, pg_connect: PgConnect) -> SQL:
    return runner(pg_connect(metrics_env))


def test_two_containers_sum_exactly_and_buckets_merge(metrics_env: str) -> None:
    run_containers(
        metrics_env,
        [
            {
                "webhook_failures": {"stripe": 3},
                "tool_call_seconds": {"search": [0.01, 0.12, 0.7]},
                "flush": True,
            }
        ],
    )
    first = scrape_samples()
    run_containers(
        metrics_env,
        [
            {
                "webhook_failures": {"stripe": 5, "twilio": 1},
                "tool_call_seconds": {"search": [0.04, 9.0], "geo": [0.05]},
                "flush": True,
            }
        ],
    )
    second = scrape_samples()

    assert value(first, "webhook_failures_total", source="stripe") == 3
    assert value(second, "webhook_failures_total", source="stripe") == 8
    assert value(second, "webhook_failures_total", source="twilio") == 1
    buckets = {
        le: value(second, f"{MS}_bucket", tool="search", le=le)
        for le in ("0.05", "0.1", "0.2", "0.5", "1.0", "5.0", "+Inf")
    }
    assert buckets == {
        "0.05": 2,  # 10 and 40 ms
        "0.1": 2,
        "0.2": 3,  # 120 ms
        "0.5": 3,
        "1.0": 4,  # 700 ms
        "5.0": 4,
        "+Inf": 5,  # 9 s
    }
    assert value(second, f"{MS}_count", tool="search") == 5
    assert value(second, f"{MS}_sum", tool="search") == pytest.approx(0.01 + 0.12 + 0.7 + 0.04 + 9)
    assert value(second, f"{MS}_bucket", tool="geo", le="0.05") == 1
    for key, before in counters_and_buckets(first).items():
        assert second[key] >= before, key
    third = scrape_samples()  # a scrape changes nothing but its own request's metrics
    recorded = [k for k in second if k[0].startswith(("webhook_", MS))]
    assert {k: third[k] for k in recorded} == {k: second[k] for k in recorded}


def test_repeated_scrapes_never_go_down_while_containers_flush(metrics_env: str) -> None:
    procs = start_containers(
        metrics_env,
        [{"invocations": 150, "tool": f"c{i}"} for i in range(2)],
    )
    previous: Samples = {}
    scrapes = 0
    while any(p.poll() is None for p in procs) or scrapes < 2:
        current = counters_and_buckets(scrape_samples())
        for key, before in previous.items():
            assert current.get(key, 0.0) >= before, key
        previous = current
        scrapes += 1
    wait_containers(procs)
    final = scrape_samples()
    assert value(final, "tool_calls_total", tool="c0", status="ok") == 150
    assert value(final, "tool_calls_total", tool="c1", status="ok") == 150
    assert scrapes >= 2


@pytest.mark.slow
def test_eight_containers_of_500_invocations_add_up_exactly(metrics_env: str, own_sql: SQL) -> None:
    run_containers(metrics_env, [{"invocations": 500, "tool": f"p{i}"} for i in range(8)])
    samples = scrape_samples()
    route = {"method": "GET", "route": "/health/detailed"}
    assert value(samples, "http_requests_total", status="200", **route) == 8 * 500
    assert value(samples, "http_request_duration_seconds_count", **route) == 8 * 500
    assert value(samples, "http_request_duration_seconds_bucket", le="+Inf", **route) == 8 * 500
    for i in range(8):
        assert value(samples, "tool_calls_total", tool=f"p{i}", status="ok") == 500
    others = own_sql(  # eight containers flushed; this process's scrapes are the ninth
        "SELECT count(*) FROM metric_flush_cursors WHERE container <> :me",
        me=current().outbox.container,
    )
    assert others == [[8]]


def test_a_failed_flush_loses_nothing_once_the_database_is_back(
    app_env: AppEnv, log_lines: LogLines, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_cluster() as cluster:
        url = metrics_database(cluster, "flaky")
        password = cluster.password
        app_env(DATABASE_URL=url)
        stripe = m.WEBHOOK_FAILURES.labels(source="stripe")
        search = m.TOOL_CALL_DURATION.labels(tool="search")
        stripe.inc()
        search.observe(0.03)
        assert flush() is True

        cluster.stop()
        stripe.inc(2)
        search.observe(0.3)
        assert flush() is False
        stripe.inc(4)
        assert flush() is False  # still down: merged with what is pending

        cluster.start()
        cluster.wait_ready()
        search.observe(3.0)
        assert flush() is True
        samples = scrape_samples()

    assert value(samples, "webhook_failures_total", source="stripe") == 7
    assert value(samples, f"{MS}_count", tool="search") == 3
    assert value(samples, f"{MS}_sum", tool="search") == pytest.approx(3.33)
    assert value(samples, f"{MS}_bucket", tool="search", le="0.5") == 2
    assert value(samples, "metrics_flush_failures_total", function="local") == 2
    failures = [line for line in log_lines() if line.get("type") == "metrics_flush"]
    assert len(failures) == 2
    assert all(f["level"] == "WARNING" and f["outcome"] for f in failures)
    assert password not in str(failures)
    emf = [
        line for line in capsys.readouterr().out.splitlines() if "metrics_flush_failures" in line
    ]
    assert len(emf) == 2  # CloudWatch hears of each failure at once, database or not


def test_a_lost_reply_is_not_counted_twice(
    metrics_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops.db import Database

    real_run = Database.run
    lose = {"replies": 1}

    def run_then_lose_reply(self: Database, sql: str, **kwargs: Any) -> list[list[Any]]:
        rows = real_run(self, sql, **kwargs)
        if "metrics_flush(" in sql and lose["replies"]:
            lose["replies"] -= 1
            raise ConnectionResetError("connection reset after the server committed")
        return rows

    monkeypatch.setattr(Database, "run", run_then_lose_reply)
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc(5)
    assert flush() is False  # the outcome is unknown to the container...
    stored = scrape_samples()
    assert value(stored, "webhook_failures_total", source="stripe") == 5  # ...but it was stored
    counter.inc(1)
    assert flush() is True  # resent with the same batch number, skipped by the server
    samples = scrape_samples()
    assert value(samples, "webhook_failures_total", source="stripe") == 6  # not 11


def test_a_flush_blocked_by_a_lock_times_out_and_retries_later(
    metrics_env: str, app_env: AppEnv, own_sql: SQL, log_lines: LogLines
) -> None:
    app_env(METRICS_FLUSH_TIMEOUT_MS="200")  # a new container with that setting
    current().outbox.shard = 0  # it writes the totals themselves: it waits for their locks
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc()
    assert flush() is True
    own_sql("BEGIN")
    own_sql("SELECT * FROM metric_values WHERE shard = 0 FOR UPDATE")
    counter.inc(10)
    assert flush() is False  # statement_timeout: the server rolled it back
    own_sql("ROLLBACK")
    counter.inc(100)
    assert flush() is True
    assert value(scrape_samples(), "webhook_failures_total", source="stripe") == 111
    (failure,) = [line for line in log_lines() if line.get("type") == "metrics_flush"]
    assert failure["outcome"] == "rejected" and "57014" in failure["error"]


def test_series_deleted_behind_a_container_are_recreated(metrics_env: str, own_sql: SQL) -> None:
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc()
    assert flush() is True
    truncate_metrics(own_sql)  # an operator resets the store
    counter.inc(2)
    assert flush() is True  # the container believed the series stored: retried with a lookup
    assert value(scrape_samples(), "webhook_failures_total", source="stripe") == 2


def test_gauges_keep_the_newest_reading_across_containers(metrics_env: str) -> None:
    from ops.metrics import reset

    def new_container_on_another_shard() -> None:
        shard = current().outbox.shard
        reset()
        current().outbox.shard = (shard + 1) % store.config().shards

    status = m.RETENTION_MISSING_INDEX.labels(table="events")
    status.set(0)
    late = current().pending.take_deltas()  # read first, flushed last (a slow container)
    new_container_on_another_shard()
    status.set(1)
    assert flush() is True
    new_container_on_another_shard()
    container = current()
    result = store.push(container.outbox, container.database(), late, 0.0)
    assert result.outcome == store.FlushOutcome.STORED
    assert value(scrape_samples(), "retention_missing_index", table="events") == 1


def test_a_hung_database_does_not_hold_the_invocation(app_env: AppEnv, blackhole: int) -> None:
    app_env(
        DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{blackhole}/app",
        METRICS_FLUSH_TIMEOUT_MS="50",
        DB_CONNECT_TIMEOUT_S="30",
    )
    counter = m.WEBHOOK_FAILURES.labels(source="stripe")
    counter.inc()
    assert flush() is False  # gave up waiting; the connect attempt goes on in the background
    counter.inc()
    assert flush() is False  # not queued behind the stuck one
    batches = current().outbox.batches
    # In the stuck job (it settles itself when it ends); kept apart from the later deltas.
    assert [(b.sending, b.sealed) for b in batches] == [(True, False), (False, False)]
    stripe = SeriesKey("webhook_failures_total", 'source="stripe"', "")
    assert [b.sums[stripe] for b in batches] == [1, 1]


def test_flush_never_raises(metrics_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "push", broken)
    m.WEBHOOK_FAILURES.labels(source="stripe").inc()
    assert flush() is False


def test_concurrent_recording_from_threads_is_not_lost(metrics_env: str) -> None:
    counter = m.WEBHOOK_FAILURES.labels(source="threads")

    def work() -> None:
        for _ in range(2000):
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert flush() is True
    assert value(scrape_samples(), "webhook_failures_total", source="threads") == 8000


RECORDED = ["webhook_failures_total", "tool_calls_total", MS, "retention_missing_index"]


def _rows_by_shard(own_sql: SQL) -> dict[str, dict[int, int]]:
    """Value rows of the families the tests record (not the scrapes' own), by kind and shard."""
    rows = own_sql(
        "SELECT s.kind, v.shard, count(*) FROM metric_values v"
        " JOIN metric_series s ON s.id = v.series_id WHERE s.family = ANY(:f)"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        f=RECORDED,
    )
    out: dict[str, dict[int, int]] = {"c": {}, "g": {}}
    for kind, shard, n in rows:
        out[kind][shard] = n
    return out


def _hold_totals(own_sql: SQL, family: str) -> int:
    """Another transaction holds the total rows of `family` (call ROLLBACK to release)."""
    own_sql("BEGIN")
    return len(
        own_sql(
            "SELECT v.series_id FROM metric_values v JOIN metric_series s ON s.id = v.series_id "
            "WHERE v.shard = 0 AND s.family = :f FOR UPDATE OF v",
            f=family,
        )
    )


def test_counters_fold_into_one_total_row_per_series_as_containers_flush(
    metrics_env: str, own_sql: SQL
) -> None:
    from ops.metrics import reset

    for shard in (3, 7, 11, 0):
        reset()
        current().outbox.shard = shard
        m.WEBHOOK_FAILURES.labels(source="stripe").inc(shard + 1)
        m.TOOL_CALL_DURATION.labels(tool="search").observe(0.1)
        m.RETENTION_MISSING_INDEX.labels(table="events").set(1)
        assert flush() is True
    rows = _rows_by_shard(own_sql)
    assert set(rows["c"]) == {0}  # no collisions, no spill rows: one row per counter series
    assert set(rows["g"]) == {3, 7, 11, 0}  # gauges: a row per shard, the newest wins
    samples = scrape_samples()
    assert value(samples, "webhook_failures_total", source="stripe") == 4 + 8 + 12 + 1
    assert value(samples, f"{MS}_count", tool="search") == 4


def test_a_flush_finding_a_total_held_spills_and_compaction_folds_it(
    metrics_env: str, own_sql: SQL
) -> None:
    from ops.db import get_db
    from ops.metrics import reset

    def container_on(shard: int) -> None:
        reset()
        current().outbox.shard = shard

    container_on(3)
    m.WEBHOOK_FAILURES.labels(source="stripe").inc(1)
    m.TOOL_CALLS.labels(tool="search", status="ok").inc(1)
    assert flush() is True
    assert _hold_totals(own_sql, "webhook_failures_total") == 1
    container_on(5)  # neither waits for the held total nor fails: the delta spills
    m.WEBHOOK_FAILURES.labels(source="stripe").inc(10)
    m.TOOL_CALLS.labels(tool="search", status="ok").inc(10)
    assert flush() is True
    own_sql("ROLLBACK")
    assert _rows_by_shard(own_sql)["c"] == {0: 2, 5: 1}  # only the held series spilled
    assert _hold_totals(own_sql, "tool_calls_total") == 1
    container_on(9)
    m.TOOL_CALLS.labels(tool="search", status="ok").inc(100)
    assert flush() is True
    own_sql("ROLLBACK")
    before = scrape_samples()
    assert value(before, "webhook_failures_total", source="stripe") == 11
    assert value(before, "tool_calls_total", tool="search", status="ok") == 111

    own_sql("UPDATE metric_values SET updated_at = now() - interval '2 minutes' WHERE shard <> 0")
    totals.compact(get_db())  # not yet idle for the compaction's threshold: nothing moves
    assert _rows_by_shard(own_sql)["c"] == {0: 2, 5: 1, 9: 1}
    _hold_totals(own_sql, "tool_calls_total")  # a total being written is left for next time
    totals.compact(get_db(), idle_s=60)
    own_sql("ROLLBACK")
    assert _rows_by_shard(own_sql)["c"] == {0: 2, 9: 1}
    totals.compact(get_db(), idle_s=60)
    assert _rows_by_shard(own_sql)["c"] == {0: 2}
    after = scrape_samples()
    recorded = [k for k in before if k[0].startswith(("webhook_", "tool_calls_"))]
    assert {k: after[k] for k in recorded} == {k: before[k] for k in recorded}


def test_compaction_gives_a_spilled_series_its_missing_total(
    metrics_env: str, own_sql: SQL
) -> None:
    from ops.db import get_db

    current().outbox.shard = 6
    m.WEBHOOK_FAILURES.labels(source="stripe").inc(7)
    assert flush() is True
    # As a store from before migration 005 has it: the count in a shard row, no total.
    own_sql("UPDATE metric_values SET shard = 6, updated_at = now() - interval '1 hour'")
    totals.compact(get_db(), idle_s=60)
    assert _rows_by_shard(own_sql)["c"] == {0: 1}
    assert value(scrape_samples(), "webhook_failures_total", source="stripe") == 7
