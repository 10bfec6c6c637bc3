"""Statements a run sends once per batch, prepared once per connection.

pg8000 sends a statement with parameters in three round trips (Parse; Describe;
Bind and Execute) and the server parses and plans it every time; a prepared
statement is one round trip, planned once (the progress record: 0.41 -> 0.09 ms,
median of 1,900 interleaved calls each, benchmarks/README.md). Behind RDS Proxy a
prepared statement pins the client connection to one database connection:
harmless for the run's own connection, which lives for one invocation and is busy
all of it.
"""

from __future__ import annotations

from typing import Any

import pg8000.native


class Prepared:
    """Prepared statements of one connection at a time (a new connection starts afresh).

    Not shared across threads: each run, and each pruner, has its own.
    """

    def __init__(self) -> None:
        self._conn: pg8000.native.Connection | None = None
        self._statements: dict[str, pg8000.native.PreparedStatement] = {}

    def run(self, conn: pg8000.native.Connection, sql: str, **params: Any) -> list[list[Any]]:
        return self.execute(conn, sql, **params)[0]

    def execute(
        self, conn: pg8000.native.Connection, sql: str, **params: Any
    ) -> tuple[list[list[Any]], int]:
        """The statement's rows and its row count (of a DELETE or UPDATE)."""
        if conn is not self._conn:  # reconnected: the old statements died with the old one
            self._conn, self._statements = conn, {}
        statement = self._statements.get(sql)
        if statement is None:
            statement = self._statements[sql] = conn.prepare(sql)
        rows = statement.run(**params)
        # pg8000 keeps a prepared statement's row count on its last execution context.
        return rows, int(statement._context.row_count)
