"""Apply `migrations/NNN_name.sql` in order, once each; safe to run again and concurrently.

    python -m tools.migrate            # uses DATABASE_URL, or DB_SECRET_ARN in AWS

Each file runs in its own transaction under a transaction-level advisory lock
(no session lock: those pin connections behind RDS Proxy). An applied file
whose content changed since is an error: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pg8000.native

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 7_262_000_001  # arbitrary, constant: serializes concurrent migrators


class MigrationError(RuntimeError):
    pass


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
            conn.run(sql)
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
    from ops.config import settings
    from ops.db import open_connection, resolve_params

    cfg = settings()
    params = resolve_params(cfg)
    conn = open_connection(params, cfg, timeout_s=30, statement_timeout_ms=600_000)
    try:
        done = apply(conn)
    finally:
        conn.close()
    print(
        f"migrations: {len(done)} applied ({', '.join(done) or 'none pending'}) on {params.target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
