"""Database connections of a test's own, beside the handlers' shared one."""

from __future__ import annotations

from typing import Any, Protocol

import pg8000.native


class SQL(Protocol):
    """The `sql` fixtures: `sql("SELECT ... :name", name=value)` -> the rows."""

    def __call__(self, query: str, /, **params: object) -> list[list[Any]]: ...


class PgConnect(Protocol):
    """The `pg_connect` fixture: `pg_connect(url, timeout_s=10)` -> a connection of the
    test's own, closed when the test ends."""

    def __call__(self, url: str, *, timeout_s: float = 10) -> pg8000.native.Connection: ...


def runner(conn: pg8000.native.Connection) -> SQL:
    """`conn.run` as the `sql` fixtures hand it out."""

    def run(query: str, /, **params: object) -> list[list[Any]]:
        rows: list[list[Any]] = conn.run(query, **params)  # pg8000 is untyped: rows enter here
        return rows

    return run
