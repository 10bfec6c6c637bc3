"""Retention on the user's column types and time zones: one cutoff, exact to the microsecond.

Each case sets the run's TimeZone as users do (for the database, or for the role the run
connects as), lets a first invocation record the run's cutoff (no time left: it only opens
the run), lays rows around that cutoff, and resumes the run. The expected fate of every row
is computed here, from the cutoff the run recorded: a `timestamp` column holds wall-clock
times of the session's zone (zoneinfo converts the cutoff), and a row exactly at the cutoff
is kept. The same under another DateStyle, directly and through PgBouncer in transaction
mode. Then odd values (infinities, BC, NULL, far future), column types, and the reading of
every timestamp the run's connection receives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pg8000.native
import pytest

from ops.db import Database, DatabaseUnavailable
from ops.retention_policies import Policy, PolicyError
from ops.timestamps import read_timestamps_exactly
from retention.inputs import resolve_targets
from tests.db.test_pooler import neighbours  # noqa: F401 - a fixture: two other clients
from tests.support.binaries import require_binary
from tests.support.db import SQL, runner
from tests.support.metrics import metrics_database
from tests.support.retention import FakeContext, audit_entries, clean_slate, run
from tools.localdb.pgbouncer import PgBouncer
from tools.localdb.pgcluster import PgCluster

pytestmark = pytest.mark.usefixtures("retention_slate")

ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata")
TYPES = {"tz": "timestamptz", "naive": "timestamp"}
ROLE = "retention_tz"
POOLED = "retention_pooled"
MAX_AGE_DAYS = 30
us, minute, hour = timedelta(microseconds=1), timedelta(minutes=1), timedelta(hours=1)
# Around the cutoff, in the column's own time (wall-clock time of the zone for `timestamp`).
AROUND = {
    "-6 h": -6 * hour,
    "-1 h": -hour,
    "-1 min": -minute,
    "-1 us": -us,
    "0": timedelta(0),
    "+1 us": us,
    "+1 min": minute,
    "+1 h": hour,
    "+6 h": 6 * hour,
    "+2 d": timedelta(days=2),
}
BULK = 2_500  # rows a second apart before the cutoff: enough for several keyset batches


@dataclass(frozen=True)
class Layout:
    """One policy table of a case: how it is laid out and pruned."""

    name: str
    batch_size: int
    indexed: bool = True
    # Partitions as (suffix, lower, upper) offsets from the cutoff (None: MINVALUE), and a
    # DEFAULT partition; none for a plain table.
    partitions: tuple[tuple[str, timedelta | None, timedelta], ...] = ()
    bulk: bool = False


LAYOUTS = (
    Layout("indexed", 1_000, bulk=True),  # keyset batches, each probed for its upper bound
    Layout("unindexed", 3, indexed=False),  # ctid batches, unordered
    # A partition straddles the cutoff (row by row); one wholly older is dropped.
    Layout(
        "straddle",
        3,
        partitions=(
            ("old", None, -2 * hour),
            ("mid", -2 * hour, 2 * hour),
            ("new", 2 * hour, timedelta(days=1)),
        ),
    ),
    # Bounds exactly at the cutoff: the older partition is dropped, the newer one kept whole.
    Layout(
        "edge",
        3,
        partitions=(("below", None, timedelta(0)), ("above", timedelta(0), timedelta(days=1))),
    ),
)


@dataclass(frozen=True)
class Table:
    kind: str  # a key of TYPES
    layout: Layout

    @property
    def name(self) -> str:
        return f"tz_{self.kind}_{self.layout.name}"

    @property
    def sql_type(self) -> str:
        return TYPES[self.kind]


def _tables() -> list[Table]:
    return [Table(kind, layout) for kind in TYPES for layout in LAYOUTS]


def _create(sql: SQL, table: Table) -> None:
    """The table, and for a partitioned one its DEFAULT partition (the others follow the
    cutoff, which exists only once the run has recorded it)."""
    sql(f"DROP TABLE IF EXISTS {table.name}")
    partitioned = bool(table.layout.partitions)
    sql(
        f"CREATE TABLE {table.name} (label text NOT NULL, at {table.sql_type})"
        + (" PARTITION BY RANGE (at)" if partitioned else "")
    )
    if table.layout.indexed:
        sql(f"CREATE INDEX ON {table.name} (at)")
    if partitioned:
        sql(f"CREATE TABLE {table.name}_default PARTITION OF {table.name} DEFAULT")


def _literal(value: datetime) -> str:
    return f"'{value.isoformat()}'"


def _lay_out(sql: SQL, table: Table, cutoff: datetime) -> dict[str, datetime]:
    """Partitions and rows around `cutoff` (a value of the column's type); the rows' values."""
    for suffix, lower, upper in table.layout.partitions:
        low = "MINVALUE" if lower is None else _literal(cutoff + lower)
        sql(
            f"CREATE TABLE {table.name}_{suffix} PARTITION OF {table.name} "
            f"FOR VALUES FROM ({low}) TO ({_literal(cutoff + upper)})"
        )
    rows = {label: cutoff + offset for label, offset in AROUND.items()}
    if table.layout.bulk:
        rows |= {f"bulk {g}": cutoff - timedelta(seconds=g) for g in range(1, BULK + 1)}
    sql(
        f"INSERT INTO {table.name} (label, at) SELECT label, CAST(at AS {table.sql_type}) "
        "FROM unnest(CAST(:labels AS text[]), CAST(:ats AS text[])) AS r(label, at)",
        labels=list(rows),
        ats=[v.isoformat() for v in rows.values()],
    )
    sql(f"ANALYZE {table.name}")  # dropped partitions are counted by the statistics
    return rows


@contextmanager
def run_time_zone(
    sql: SQL, database_url: str, monkeypatch: pytest.MonkeyPatch, setting: str, zone: str
) -> Iterator[None]:
    """The TimeZone a fresh connection of the run gets: the database's, or its role's."""
    database = sql("SELECT current_database()")[0][0]
    if setting == "database":
        sql(f"ALTER DATABASE {database} SET TimeZone = '{zone}'")
        try:
            yield
        finally:
            sql(f"ALTER DATABASE {database} RESET TimeZone")
        return
    sql(f"DROP ROLE IF EXISTS {ROLE}")
    # A superuser only so that it may drop the test's partitions; the point is its TimeZone.
    sql(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD 'tz'")
    sql(f"ALTER ROLE {ROLE} SET TimeZone = '{zone}'")
    scheme, _, rest = database_url.partition("://")
    monkeypatch.setenv("DATABASE_URL", f"{scheme}://{ROLE}:tz@{rest.rpartition('@')[2]}")
    try:
        yield
    finally:
        sql(f"DROP ROLE IF EXISTS {ROLE}")


def _policies(tables: list[Table]) -> str:
    return json.dumps(
        [
            {
                "table": t.name,
                "column": "at",
                "maxAgeDays": MAX_AGE_DAYS,
                "batchSize": t.layout.batch_size,
            }
            for t in tables
        ]
    )


def _recorded_cutoffs(sql: SQL, run_id: str) -> dict[str, datetime]:
    rows = sql("SELECT table_name, cutoff FROM retention_run_tables WHERE run_key = :k", k=run_id)
    return {name: cutoff for name, cutoff in rows}


def _in_column_time(cutoff: datetime, table: Table, zone: str) -> datetime:
    """The recorded instant as the column holds it: wall-clock time in `zone` if naive."""
    if table.kind == "tz":
        return cutoff
    return cutoff.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        return value.isoformat()
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
@pytest.mark.parametrize("setting", ["database", "role"])
@pytest.mark.parametrize("zone", ZONES)
def test_exactly_the_rows_older_than_the_recorded_cutoff_go(
    sql: SQL,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    zone: str,
    setting: str,
    dry_run: bool,
) -> None:
    settings = run_time_zone(sql, database_url, monkeypatch, setting, zone)
    _prune_around_the_cutoff(
        sql, monkeypatch, settings, zone, dry_run, f"tz-{_slug(zone)}-{setting}"
    )


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_the_databases_datestyle_changes_nothing(
    sql: SQL, database_url: str, monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    """Day before month and zone abbreviations (`06.11.2026 17:44:21.5 IST`, which
    PostgreSQL 15 reads back as Israel's): the run's connection prints ISO all the same."""
    database = sql("SELECT current_database()")[0][0]
    sql(f"ALTER DATABASE {database} SET DateStyle = 'German, DMY'")
    try:
        zone = "Asia/Kolkata"
        settings = run_time_zone(sql, database_url, monkeypatch, "role", zone)
        _prune_around_the_cutoff(sql, monkeypatch, settings, zone, dry_run, "datestyle")
    finally:
        sql(f"ALTER DATABASE {database} RESET DateStyle")


@pytest.fixture(scope="module")
def bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on a database of this module's own."""
    require_binary("pgbouncer")
    metrics_database(pg_cluster, POOLED)
    proxy = PgBouncer(pg_cluster, POOLED, pool_size=2)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.usefixtures("neighbours")
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_through_a_transaction_pooler_in_another_datestyle(
    pg_cluster: PgCluster,
    bouncer: PgBouncer,
    pg_connect: Callable[..., pg8000.native.Connection],
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool,
) -> None:
    """The run's transactions land on either of two server connections that two other
    clients share: the TimeZone and the DateStyle it reads in follow it (PgBouncer tracks
    both per client)."""
    direct = runner(pg_connect(pg_cluster.url(POOLED)))
    clean_slate(direct, monkeypatch)
    zone = "Asia/Kolkata"

    @contextmanager
    def pooled() -> Iterator[None]:
        direct(f"ALTER DATABASE {POOLED} SET TimeZone = '{zone}'")
        direct(f"ALTER DATABASE {POOLED} SET DateStyle = 'German, DMY'")
        try:  # the settings are reset however this ends: the next test starts clean
            bouncer.reconnect()  # server connections with the database's new settings
            try:
                client = pg_connect(bouncer.url)
            except DatabaseUnavailable as exc:  # say what the pooler was doing
                raise AssertionError(f"pgbouncer's log ends:\n{bouncer.log()[-3000:]}") from exc
            assert client.run("SHOW TimeZone") + client.run("SHOW DateStyle") == [
                [zone],
                ["German, DMY"],
            ]
            monkeypatch.setenv("DATABASE_URL", bouncer.url)
            yield
        finally:
            direct(f"ALTER DATABASE {POOLED} RESET TimeZone")
            direct(f"ALTER DATABASE {POOLED} RESET DateStyle")
            bouncer.reconnect()

    _prune_around_the_cutoff(direct, monkeypatch, pooled(), zone, dry_run, "pooled")


def _slug(zone: str) -> str:
    return zone.replace("/", "-")


def _prune_around_the_cutoff(
    sql: SQL,
    monkeypatch: pytest.MonkeyPatch,
    settings: AbstractContextManager[None],
    zone: str,
    dry_run: bool,
    run_id: str,
) -> None:
    """Open the run, lay rows around its cutoff, resume it under `settings`; check every
    row's fate and the audit. `sql` reaches the run's database directly."""
    tables = _tables()
    for table in tables:
        _create(sql, table)
    monkeypatch.setenv("RETENTION_POLICIES", _policies(tables))
    evt = {"runId": run_id, "dryRun": dry_run}
    try:
        with settings:
            opened = run(evt, FakeContext(remaining_ms=0))  # records the cutoffs, nothing else
            assert opened["status"] == "stopped"
            recorded = _recorded_cutoffs(sql, opened["runId"])
            assert len(set(recorded.values())) == 1  # one statement, one clock reading
            rows: dict[str, dict[str, datetime]] = {}
            for table in tables:
                cutoff = _in_column_time(recorded[table.name], table, zone)
                rows[table.name] = _lay_out(sql, table, cutoff)
            resumed = run(evt)
        assert resumed["status"] == "completed"
        assert _recorded_cutoffs(sql, opened["runId"]) == recorded  # resumed with the same one
        entries = audit_entries(sql, opened["runId"])
        for table in tables:
            cutoff = _in_column_time(recorded[table.name], table, zone)
            expired = {label for label, at in rows[table.name].items() if at < cutoff}
            dropped = [
                f"public.{table.name}_{suffix}"
                for suffix, _, upper in table.layout.partitions
                if upper <= timedelta(0)
            ]
            in_dropped = {
                label
                for label, at in rows[table.name].items()
                for suffix, lower, upper in table.layout.partitions
                if upper <= timedelta(0)
                and (lower is None or at >= cutoff + lower)
                and at < cutoff + upper
            }
            mine = [e for e in entries if e["entity"] == table.name]
            left = {r[0] for r in sql(f"SELECT label FROM {table.name}")}
            last = mine[-1]
            if dry_run:
                assert left == set(rows[table.name]), table
                assert last["wouldDelete"] == len(expired), table
                assert last["wouldDropPartitions"] == dropped, table
                assert last["oldest"] == _iso(min(rows[table.name].values())), table
            else:
                assert left == set(rows[table.name]) - expired, table
                assert sum(e["deleted"] for e in mine) == len(expired), table
                assert sum(e["rowsDeleted"] for e in mine) == len(expired - in_dropped), table
                assert [p for e in mine for p in e["partitionsDropped"]] == dropped, table
                assert last["completed"], table
            assert {e["cutoff"] for e in mine} == {_iso(recorded[table.name])}, table
    finally:
        for table in tables:
            sql(f"DROP TABLE IF EXISTS {table.name}")


# -- odd values ------------------------------------------------------------------------------
ODD = {  # label -> the value as SQL text, and whether it is older than any cutoff
    "-infinity": ("-infinity", True),
    "-infinity 2": ("-infinity", True),  # ties wider than a batch: ctid batches, text frontier
    "-infinity 3": ("-infinity", True),
    "bc": ("0044-03-15 12:00:00 BC", True),
    "bc 2": ("0010-01-01 00:00:00 BC", True),
    "null": (None, False),
    "far future": ("12000-01-01 00:00:00", False),
    "infinity": ("infinity", False),
}


def _odd_table(sql: SQL, name: str, sql_type: str, labels: list[str], partitioned: bool) -> None:
    sql(f"DROP TABLE IF EXISTS {name}")
    sql(
        f"CREATE TABLE {name} (label text NOT NULL, at {sql_type})"
        + (" PARTITION BY RANGE (at)" if partitioned else "")
    )
    sql(f"CREATE INDEX ON {name} (at)")
    if partitioned:  # old rows in a partition dropped whole; the rest row by row
        sql(
            f"CREATE TABLE {name}_old PARTITION OF {name} "
            "FOR VALUES FROM (MINVALUE) TO ('0001-01-01 00:00:00 BC')"
        )
        sql(f"CREATE TABLE {name}_default PARTITION OF {name} DEFAULT")
    for label in labels:
        if label in ODD:
            sql(
                f"INSERT INTO {name} VALUES (:label, CAST(:at AS {sql_type}))",
                label=label,
                at=ODD[label][0],
            )
        else:  # a day older or newer than the cutoff
            days = MAX_AGE_DAYS + (1 if label == "expired" else -1)
            sql(
                f"INSERT INTO {name} VALUES (:label, CAST(now() - make_interval(days => :d) "
                f"AS {sql_type}))",
                label=label,
                d=days,
            )
    sql(f"ANALYZE {name}")


ODD_TABLES = {  # name suffix -> the rows it holds, partitioned
    "all": ([*ODD, "expired", "kept"], False),
    "part": ([*ODD, "expired", "kept"], True),
    "bc": (["bc", "bc 2", "expired", "kept"], False),
    "future": (["null", "far future", "infinity"], False),
}


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_infinities_bc_dates_nulls_and_far_future_rows(
    sql: SQL, database_url: str, monkeypatch: pytest.MonkeyPatch, zone: str, dry_run: bool
) -> None:
    names = {}
    for kind, sql_type in TYPES.items():
        for suffix, (labels, partitioned) in ODD_TABLES.items():
            name = f"odd_{kind}_{suffix}"
            _odd_table(sql, name, sql_type, labels, partitioned)
            names[name] = labels
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        json.dumps(
            [
                {"table": n, "column": "at", "maxAgeDays": MAX_AGE_DAYS, "batchSize": 2}
                for n in names
            ]
        ),
    )
    try:
        with run_time_zone(sql, database_url, monkeypatch, "database", zone):
            result = run({"runId": f"odd-{_slug(zone)}", "dryRun": dry_run})
        assert result["status"] == "completed"
        entries = {e["entity"]: e for e in audit_entries(sql, result["runId"])}
        for name, labels in names.items():
            expired = {x for x in labels if ODD.get(x, (None, x == "expired"))[1]}
            left = {r[0] for r in sql(f"SELECT label FROM {name}")}
            entry = entries[name]
            if not dry_run:
                assert left == set(labels) - expired, name
                assert entry["deleted"] == len(expired), name
                continue
            assert left == set(labels), name
            assert entry["wouldDelete"] == len(expired), name
            oldest = entry["oldest"]
            if "-infinity" in labels:
                assert oldest == "-infinity", name
            elif "bc" in labels:  # as PostgreSQL spells it: never read as a year AD
                assert oldest.startswith("0044-03-15") and oldest.endswith(" BC"), (name, oldest)
            else:  # the oldest non-NULL value is the far-future one
                assert oldest.startswith(("12000-01-01", "11999-12-31")), (name, oldest)
    finally:
        for name in names:
            sql(f"DROP TABLE IF EXISTS {name}")


# -- column types ----------------------------------------------------------------------------
def test_column_types_timestamps_of_any_precision_pass_and_others_are_named(sql: SQL) -> None:
    sql("DROP TABLE IF EXISTS retention_types")
    sql("DROP DOMAIN IF EXISTS retention_instant")
    sql("CREATE DOMAIN retention_instant AS timestamptz(3)")
    sql(
        "CREATE TABLE retention_types (a timestamptz(0), b timestamp(3), c retention_instant, "
        "d date, e text, f timestamptz[])"
    )
    db = Database()
    try:
        policies = [Policy("retention_types", c, 30, 10) for c in "abc"]
        targets = resolve_targets(db, policies)
        assert [t.sql_type for t in targets] == ["timestamptz", "timestamp", "timestamptz"]
        for column, declared in (
            ("d", "date"),
            ("e", "text"),
            ("f", r"timestamp\(6\) with time zone\[\]|timestamp with time zone\[\]"),
        ):
            with pytest.raises(
                PolicyError,
                match=rf"policy retention_types\.{column}: column {column} of "
                rf"public\.retention_types is ({declared}); retention needs timestamptz or "
                "timestamp",
            ):
                resolve_targets(db, [Policy("retention_types", column, 30, 10)])
    finally:
        db.close()
        sql("DROP TABLE retention_types")
        sql("DROP DOMAIN retention_instant")


# -- reading -------------------------------------------------------------------------------
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_every_timestamp_read_is_the_value_the_server_holds(
    database_url: str, pg_connect: Callable[..., pg8000.native.Connection], zone: str
) -> None:
    """What the run's connection reads, sent back cast to the column's type, is the very
    value; a value no datetime holds stays text (never a year AD for a BC date)."""
    conn = pg_connect(database_url)
    read_timestamps_exactly(conn)
    conn.run(f"SET TimeZone = '{zone}'")
    texts = [
        "-infinity",
        "infinity",
        "0044-03-15 12:00:00 BC",
        "0001-01-01 00:00:00",
        "0001-01-01 00:00:00+05:30",
        "2026-03-29 02:30:00.000001",
        "2026-11-01 01:30:00-04",
        "9999-12-31 23:59:59.999999",
        "12000-01-01 00:00:00",
    ]
    for sql_type in TYPES.values():
        for text in texts:
            ((value,),) = conn.run(f"SELECT CAST(:t AS {sql_type})", t=text)
            ((same,),) = conn.run(
                f"SELECT CAST(:v AS {sql_type}) = CAST(:t AS {sql_type})", v=value, t=text
            )
            assert same, (sql_type, text, value)
            if text.endswith(("infinity", " BC")) or text.startswith("12000"):
                assert isinstance(value, str), (sql_type, text, value)
            # At the range's edges an offset may carry a timestamptz out of it in UTC: text.
            elif not (sql_type == "timestamptz" and text.startswith(("0001", "9999"))):
                assert isinstance(value, datetime), (sql_type, text, value)
                assert (value.tzinfo is None) == (sql_type == "timestamp"), (text, value)
