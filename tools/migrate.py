"""Apply `migrations/NNN_name.sql` in order, once each; safe to run again and concurrently.

    python -m tools.migrate   # DATABASE_URL, else DB_SECRET_ARN, else make run's embedded database

A separate metrics database (METRICS_DATABASE_URL, else METRICS_DB_SECRET_ARN) is migrated
next, with the same files: one history for both databases, so that no migration has to be
sorted into "metrics" or "application" and the checks below mean the same on each (the
metrics database then holds the application's tables empty; docs/metrics-database.md).

Each file runs in its own transaction, which first takes a transaction-level advisory
lock (no session lock: those pin connections behind RDS Proxy) and only then creates
`schema_migrations` if missing and reads it: concurrent migrators queue, and each file
is applied by one of them. Refused, naming the file, before anything is applied: an
applied file whose content changed since (migrations are append-only); a file numbered
below one already applied but not applied itself (out of order); and an applied
migration with no file here (the database is ahead of this code: a newer version
applied it), unless MIGRATIONS_ALLOW_UNKNOWN is set.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pg8000.native
from pg8000.exceptions import DatabaseError

from ops.sql import server_message
from tools.cli import ToolError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 7_262_000_001  # arbitrary, constant: serializes concurrent migrators


class MigrationError(ToolError):
    """A migration that cannot be applied; the message names the file."""


@dataclass
class Migrated:
    """What one run did: the files it applied, those applied before, and the applied
    migrations without a file here (only when MIGRATIONS_ALLOW_UNKNOWN allowed them)."""

    applied: list[str] = field(default_factory=list)
    earlier: int = 0
    unknown: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.applied:
            done = f"applied {', '.join(self.applied)} ({self.earlier} applied earlier)"
        else:
            done = f"up to date: {self.earlier} migrations applied earlier, none pending"
        if self.unknown:
            done += (
                f"; the database also has {', '.join(self.unknown)}, not in migrations/"
                " (allowed by MIGRATIONS_ALLOW_UNKNOWN)"
            )
        return done


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:3].isdigit())


def _applied_versions(conn: pg8000.native.Connection) -> dict[str, str]:
    """version -> checksum, read under the lock (the table is created by the first run)."""
    conn.run(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {str(v): str(c) for v, c in conn.run("SELECT version, checksum FROM schema_migrations")}


def _check_history(
    files: list[Path], checksums: dict[str, str], applied: dict[str, str], allow_unknown: bool
) -> list[str]:
    """Refuse a database this code cannot safely migrate; returns the unknown versions."""
    unknown = sorted(set(applied) - set(checksums))
    if unknown and not allow_unknown:
        raise MigrationError(
            f"the database has {len(unknown)} applied migration(s) not in migrations/:"
            f" {', '.join(unknown)} (a newer version of the code applied them)",
            "Deploy that newer version, or set MIGRATIONS_ALLOW_UNKNOWN=true to apply"
            " this code's migrations anyway.",
        )
    for name, checksum in checksums.items():
        if applied.get(name, checksum) != checksum:
            raise MigrationError(
                f"{name} changed after it was applied; add a new migration instead"
            )
    numbered = [v for v in applied if v[:3].isdigit()]
    highest = max(numbered, default="")
    for late in (p.name for p in files if p.name not in applied and p.name < highest):
        raise MigrationError(
            f"{late} was never applied, but {highest}, numbered above it, was:"
            " migrations apply in order",
            f"Give it a number above {highest} (applied files never change).",
        )
    return unknown


def apply(
    conn: pg8000.native.Connection,
    directory: Path = MIGRATIONS_DIR,
    *,
    allow_unknown: bool | None = None,
) -> Migrated:
    """Applies the pending files, in order; `allow_unknown` defaults to the setting."""
    if allow_unknown is None:
        from ops.config import settings

        allow_unknown = settings().migrations_allow_unknown
    files = migration_files(directory)
    checksums = {p.name: hashlib.sha256(p.read_text().encode()).hexdigest() for p in files}
    result = Migrated()
    for path in files:
        conn.run("BEGIN")
        try:
            conn.run("SELECT pg_advisory_xact_lock(:k)", k=_LOCK_KEY)  # first: see docstring
            applied = _applied_versions(conn)
            result.unknown = _check_history(files, checksums, applied, allow_unknown)
            if path.name in applied:
                conn.run("COMMIT")
                result.earlier += 1
                continue
            try:
                conn.run(path.read_text())
            except DatabaseError as exc:
                raise MigrationError(
                    f"{path.name} failed: {server_message(exc) or exc}",
                    "Nothing of it was applied (one transaction per file); fix the file.",
                ) from exc
            conn.run(
                "INSERT INTO schema_migrations (version, checksum) VALUES (:v, :c)",
                v=path.name,
                c=checksums[path.name],
            )
            conn.run("COMMIT")
            result.applied.append(path.name)
        except BaseException:
            conn.run("ROLLBACK")
            raise
    return result


def apply_url(url: str, directory: Path = MIGRATIONS_DIR) -> Migrated:
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=30, statement_timeout_ms=600_000)
    try:
        return apply(conn, directory)
    finally:
        conn.close()


def main() -> int:
    """DATABASE_URL, else DB_SECRET_ARN (AWS), else the embedded database of `make run`;
    then the separate metrics database, if any."""
    if os.environ.get("DB_SECRET_ARN") and not os.environ.get("DATABASE_URL"):
        done, target = _apply_from_secret()
    else:
        from ops.db import parse_database_url
        from tools.localdb import local_database

        with local_database() as (url, _):
            done = apply_url(url)
            embedded = "" if os.environ.get("DATABASE_URL") else " (embedded)"
            target = parse_database_url(url).target + embedded
    print(f"migrations on {target}: {done.summary()}")
    metrics = migrate_metrics_database()
    if metrics is not None:
        done, target = metrics
        print(f"migrations on {target} (metrics database): {done.summary()}")
    return 0


def migrate_metrics_database() -> tuple[Migrated, str] | None:
    """The separate metrics database migrated (the same files), and where it is; None when
    the store is the application's database."""
    from ops.config import settings
    from ops.db import parse_database_url

    cfg = settings()
    if cfg.metrics_database_url:
        # Parsed first: a malformed URL is named as METRICS_DATABASE_URL.
        target = parse_database_url(cfg.metrics_database_url, "METRICS_DATABASE_URL").target
        return apply_url(cfg.metrics_database_url), target
    if cfg.metrics_db_secret_arn:
        return _apply_from_secret(metrics=True)
    return None


def _apply_from_secret(*, metrics: bool = False) -> tuple[Migrated, str]:
    from ops.config import settings
    from ops.db import (
        DatabaseUnavailable,
        app_source,
        open_connection,
        resolve_params,
        store_source,
    )
    from tools.cli import ToolError, database_hint

    cfg = settings()
    source = store_source(cfg) if metrics else app_source(cfg)
    variable = "METRICS_DB_SECRET_ARN" if metrics else "DB_SECRET_ARN"
    try:
        params = resolve_params(cfg, source=source)
    except (DatabaseUnavailable, ValueError):
        raise
    except Exception as exc:  # botocore/Powertools: credentials, region, access, no such secret
        raise ToolError(f"cannot read the secret {variable}: {exc}", database_hint()) from None
    conn = open_connection(params, cfg, timeout_s=30, statement_timeout_ms=600_000)
    try:
        return apply(conn), params.target
    finally:
        conn.close()


if __name__ == "__main__":
    from tools.cli import run

    sys.exit(run("migrate", main))
