"""Migrations are idempotent; the audit log is append-only in the database itself."""

from __future__ import annotations

import pytest
from pg8000.exceptions import DatabaseError

from tools.migrate import MigrationError, apply, apply_url, migration_files


def test_applying_twice_changes_nothing(database_url, sql):
    before = sql("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
    assert [r[0] for r in before] == [p.name for p in migration_files()]
    assert apply_url(database_url) == []
    after = sql("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
    assert after == before


def test_fresh_database_gets_every_table_and_index(pg_cluster, sql):
    url = pg_cluster.create_database("fresh_migrations")
    try:
        assert apply_url(url) == [p.name for p in migration_files()]
        assert apply_url(url) == []
    finally:
        sql('DROP DATABASE "fresh_migrations" WITH (FORCE)')


def test_changed_migration_is_refused(database_url, tmp_path):
    import pg8000.native

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


def test_a_failing_migration_names_its_file_and_what_the_server_said(database_url, tmp_path, sql):
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


def test_retention_indexes_exist(sql):
    rows = sql(
        "SELECT indexname FROM pg_indexes WHERE tablename IN ('inbound_events', 'chat_sessions')"
    )
    names = {r[0] for r in rows}
    assert {"inbound_events_received_at_idx", "chat_sessions_updated_at_idx"} <= names


@pytest.fixture
def audit_row(sql) -> int:
    return sql(
        "INSERT INTO audit_logs (actor_type, actor_id, action, entity, payload)"
        " VALUES ('user', 'u-1', 'listing.update', 'listings', '{\"x\": 1}') RETURNING id"
    )[0][0]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'tampered' WHERE id = :id",
        "DELETE FROM audit_logs WHERE id = :id",
    ],
)
def test_audit_rows_cannot_be_changed_or_deleted(sql, audit_row, statement):
    with pytest.raises(DatabaseError, match="append-only"):
        sql(statement, id=audit_row)
    assert sql("SELECT action FROM audit_logs WHERE id = :id", id=audit_row) == [["listing.update"]]


def test_audit_log_cannot_be_truncated(sql, audit_row):
    with pytest.raises(DatabaseError, match="append-only"):
        sql("TRUNCATE audit_logs")
    assert sql("SELECT count(*) FROM audit_logs WHERE id = :id", id=audit_row) == [[1]]


def test_make_migrate_reads_the_database_secret_as_the_readme_shows(
    database_url, secrets_client, app_env, capsys
):
    """`DB_SECRET_ARN=… make migrate`: the deploy step, against a moto Secrets Manager."""
    import json as _json

    from ops.db import parse_database_url
    from tools.cli import run
    from tools.migrate import main

    target = parse_database_url(database_url)
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
    assert f"none pending) on {target.target}" in out.out and out.err == ""

    app_env(DB_SECRET_ARN=arn.replace("rds-db", "gone"))
    assert run("migrate", main) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "database secret" in err[0] and "AWS credentials" in err[1], err
    assert target.password not in "\n".join(err)
