"""Apply `migrations/NNN_name.sql` in order, once each; safe to run again and concurrently.

    python -m tools.migrate   # DATABASE_URL, else DB_SECRET_ARN, else make run's embedded database

Each file runs in its own transaction under a transaction-level advisory lock
(no session lock: those pin connections behind RDS Proxy). An applied file
whose content changed since is an error: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pg8000.native
from pg8000.exceptions import DatabaseError

from ops.sql import server_message
from tools.cli import ToolError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 7_262_000_001  # arbitrary, constant: serializes concurrent migrators


class MigrationError(ToolError):
    """A migration that cannot be applied; the message names the file."""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:3].isdigit())


def apply(conn: pg8000.native.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Returns the names of the migrations applied by this call."""
    conn.run(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied_now: list[str] = []
    for path in migration_files(directory):
        sql = path.read_text()
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        conn.run("BEGIN")
        try:
            conn.run("SELECT pg_advisory_xact_lock(:k)", k=_LOCK_KEY)
            rows = conn.run(
                "SELECT checksum FROM schema_migrations WHERE version = :v", v=path.name
            )
            if rows:
                if rows[0][0] != checksum:
                    raise MigrationError(
                        f"{path.name} changed after it was applied; add a new migration instead"
                    )
                conn.run("COMMIT")
                continue
            try:
                conn.run(sql)
            except DatabaseError as exc:
                raise MigrationError(
                    f"{path.name} failed: {server_message(exc) or exc}",
                    "Nothing of it was applied (one transaction per file); fix the file.",
                ) from exc
            conn.run(
                "INSERT INTO schema_migrations (version, checksum) VALUES (:v, :c)",
                v=path.name,
                c=checksum,
            )
            conn.run("COMMIT")
            applied_now.append(path.name)
        except BaseException:
            conn.run("ROLLBACK")
            raise
    return applied_now


def apply_url(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=30, statement_timeout_ms=600_000)
    try:
        return apply(conn, directory)
    finally:
        conn.close()


def main() -> int:
    """DATABASE_URL, else DB_SECRET_ARN (AWS), else the embedded database of `make run`."""
    if os.environ.get("DB_SECRET_ARN") and not os.environ.get("DATABASE_URL"):
        done, target = _apply_from_secret()
    else:
        from ops.db import parse_database_url
        from tools.localdb import local_database

        with local_database() as (url, _):
            done = apply_url(url)
            embedded = "" if os.environ.get("DATABASE_URL") else " (embedded)"
            target = parse_database_url(url).target + embedded
    print(f"migrations: {len(done)} applied ({', '.join(done) or 'none pending'}) on {target}")
    return 0


def _apply_from_secret() -> tuple[list[str], str]:
    from ops.config import settings
    from ops.db import DatabaseUnavailable, open_connection, resolve_params
    from tools.cli import ToolError, database_hint

    cfg = settings()
    try:
        params = resolve_params(cfg)
    except (DatabaseUnavailable, ValueError):
        raise
    except Exception as exc:  # botocore/Powertools: credentials, region, access, no such secret
        raise ToolError(f"cannot read the secret DB_SECRET_ARN: {exc}", database_hint()) from None
    conn = open_connection(params, cfg, timeout_s=30, statement_timeout_ms=600_000)
    try:
        return apply(conn), params.target
    finally:
        conn.close()


if __name__ == "__main__":
    from tools.cli import run

    sys.exit(run("migrate", main))
