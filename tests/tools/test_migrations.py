"""Migrations are idempotent; the audit log is append-only in the database itself."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pg8000.native
import pytest
from pg8000.exceptions import DatabaseError

from tests.support.db import SQL, runner
from tools import PYTHONPATH, ROOT
from tools.localdb.migrate import MigrationError, apply, apply_url, migration_files
from tools.localdb.pgcluster import PgCluster


def test_applying_twice_changes_nothing(database_url: str, sql: SQL) -> None:
    before = sql("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
    assert [r[0] for r in before] == [p.name for p in migration_files()]
    assert apply_url(database_url).applied == []
    after = sql("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
    assert after == before


def test_fresh_database_gets_every_table_and_index(pg_cluster: PgCluster, sql: SQL) -> None:
    url = pg_cluster.create_database("fresh_migrations")
    try:
        assert apply_url(url).applied == [p.name for p in migration_files()]
        assert apply_url(url).applied == []
    finally:
        sql('DROP DATABASE "fresh_migrations" WITH (FORCE)')


def test_changed_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    from ops.db import connect_url

    for f in migration_files():
        (tmp_path / f.name).write_text(f.read_text())
    first = migration_files()[0].name
    (tmp_path / first).write_text("-- edited after release\n" + (tmp_path / first).read_text())
    conn: pg8000.native.Connection = connect_url(database_url)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            apply(conn, tmp_path)
    finally:
        conn.close()


def test_a_failing_migration_names_its_file_and_what_the_server_said(
    database_url: str, tmp_path: Path, sql: SQL
) -> None:
    from ops.db import connect_url

    for f in migration_files():
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "999_broken.sql").write_text("CREATE TABLE half_done (id int); SELEC 1;")
    conn = connect_url(database_url)
    try:
        with pytest.raises(MigrationError, match=r"999_broken.sql failed: .*syntax.*\(42601\)"):
            apply(conn, tmp_path)
    finally:
        conn.close()
    # One transaction per file: nothing of it stayed.
    assert sql("SELECT to_regclass('half_done') IS NULL")[0][0]


def test_retention_indexes_exist(sql: SQL) -> None:
    rows = sql(
        "SELECT indexname FROM pg_indexes WHERE tablename IN ('inbound_events', 'chat_sessions')"
    )
    names = {r[0] for r in rows}
    assert {"inbound_events_received_at_idx", "chat_sessions_updated_at_idx"} <= names


@pytest.fixture
def audit_row(sql: SQL) -> int:
    return int(
        sql(
            "INSERT INTO audit_logs (actor_type, actor_id, action, entity, payload)"
            " VALUES ('user', 'u-1', 'listing.update', 'listings', '{\"x\": 1}') RETURNING id"
        )[0][0]
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'tampered' WHERE id = :id",
        "DELETE FROM audit_logs WHERE id = :id",
    ],
)
def test_audit_rows_cannot_be_changed_or_deleted(sql: SQL, audit_row: int, statement: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"):
        sql(statement, id=audit_row)
    assert sql("SELECT action FROM audit_logs WHERE id = :id", id=audit_row) == [["listing.update"]]


def test_audit_log_cannot_be_truncated(sql: SQL, audit_row: int) -> None:
    with pytest.raises(DatabaseError, match="append-only"):
        sql("TRUNCATE audit_logs")
    assert sql("SELECT count(*) FROM audit_logs WHERE id = :id", id=audit_row) == [[1]]


def test_make_migrate_reads_the_database_secret_as_the_readme_shows(
    database_url: str,
    secrets_client: Any,
    app_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`DB_SECRET_ARN=… make migrate`: the deploy step, against a moto Secrets Manager."""
    import json as _json

    from ops.db import parse_database_url
    from tools.cli import run
    from tools.localdb.migrate import main

    target = parse_database_url(database_url)
    assert target.password  # the test cluster's URL carries one: it must not be printed
    secret = {
        "username": target.user,
        "password": target.password,
        "host": target.host,
        "port": target.port,
        "dbname": target.database,
    }
    arn = secrets_client.create_secret(Name="rds-db", SecretString=_json.dumps(secret))["ARN"]
    app_env(DB_SECRET_ARN=arn, DB_SSL_MODE="disable", AWS_REGION="eu-west-1")
    assert run("migrate", main) == 0
    out = capsys.readouterr()
    assert f"on {target.target}: up to date" in out.out and out.err == ""

    app_env(DB_SECRET_ARN=arn.replace("rds-db", "gone"))
    assert run("migrate", main) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "database secret" in err[0] and "AWS credentials" in err[1], err
    assert target.password not in "\n".join(err)


# -- concurrency, a database ahead of the code, files out of order ----------------------


@pytest.fixture
def new_database(pg_cluster: PgCluster, sql: SQL) -> Iterator[Callable[[], str]]:
    """Databases of the test's own with nothing applied; dropped afterwards."""
    names: list[str] = []

    def create() -> str:
        names.append(f"migrate_{uuid.uuid4().hex[:12]}")
        return str(pg_cluster.create_database(names[-1]))

    yield create
    for name in names:
        sql(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(new_database: Callable[[], str]) -> str:
    return str(new_database())


def start_migrate(url: str, **env: str) -> subprocess.Popen[str]:
    """`python -m tools.localdb.migrate` as `make migrate` runs it, on DATABASE_URL."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DB_SECRET_ARN")}
    return subprocess.Popen(
        [sys.executable, "-m", "tools.localdb.migrate"],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": PYTHONPATH, "DATABASE_URL": url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_migrators_on_an_empty_database_all_succeed_and_apply_each_file_once(
    new_database: Callable[[], str],
    pg_connect: Callable[..., pg8000.native.Connection],
    processes: int,
) -> None:
    """Before the lock came first, two of them failed in about half the trials (23505)."""
    for _ in range(3):
        url = new_database()
        results = [finish(p) for p in [start_migrate(url) for _ in range(processes)]]
        for code, out, err in results:
            assert code == 0 and err == "", (code, out, err)
        rows = runner(pg_connect(url))(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
        )
        assert rows == [[p.name, 1] for p in migration_files()]
        # Each file was applied by exactly one of them; the others found it done.
        said = " ".join(out for _, out, _ in results)
        for path in migration_files():
            assert said.count(path.name) == 1, said


def test_a_second_run_says_up_to_date_not_zero_applied(empty_database: str) -> None:
    code, first, _ = finish(start_migrate(empty_database))
    assert code == 0 and migration_files()[-1].name in first, first
    code, second, err = finish(start_migrate(empty_database))
    count = len(migration_files())
    assert code == 0 and err == "", err
    assert f"up to date: {count} migrations applied earlier" in second, second
    assert "0 applied" not in second


def test_a_database_ahead_of_the_code_is_two_lines_and_exit_2(
    empty_database: str, pg_connect: Callable[..., pg8000.native.Connection]
) -> None:
    assert finish(start_migrate(empty_database))[0] == 0
    runner(pg_connect(empty_database))(
        "INSERT INTO schema_migrations (version, checksum) VALUES ('999_from_the_future.sql', 'x')"
    )
    code, out, err = finish(start_migrate(empty_database))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, (code, out, err)
    assert "999_from_the_future.sql" in lines[0] and "not in migrations/" in lines[0], lines
    assert "MIGRATIONS_ALLOW_UNKNOWN" in lines[1], lines

    code, out, err = finish(start_migrate(empty_database, MIGRATIONS_ALLOW_UNKNOWN="true"))
    assert code == 0 and err == "", err
    assert "up to date" in out and "999_from_the_future.sql" in out, out


def test_a_file_numbered_below_an_applied_one_is_refused_by_name(
    empty_database: str, tmp_path: Path, sql: SQL
) -> None:
    from ops.db import connect_url

    files = migration_files()
    for f in files:
        (tmp_path / f.name).write_text(f.read_text())
    conn = connect_url(empty_database)
    try:
        apply(conn, tmp_path)
        late = f"{int(files[-1].name[:3]) - 1:03d}_late.sql"
        assert late not in {f.name for f in files}
        (tmp_path / late).write_text("CREATE TABLE late_arrival (id int);")
        with pytest.raises(
            MigrationError, match=rf"{late} was never applied, but {files[-1].name}"
        ):
            apply(conn, tmp_path)
    finally:
        conn.close()
    assert runner(connect_url(empty_database))("SELECT to_regclass('late_arrival')") == [[None]]


@pytest.mark.parametrize(
    ("query", "named"), [("sslmode=bogus", "sslmode"), ("application_name=x", "application_name")]
)
def test_a_refused_database_url_option_is_two_lines_and_exit_2(query: str, named: str) -> None:
    code, out, err = finish(start_migrate(f"postgresql://app:s3cret@127.0.0.1:1/app?{query}"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and named in lines[0], (code, out, err)
    assert "s3cret" not in err and "Traceback" not in err
