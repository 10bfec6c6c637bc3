"""PostgreSQL's small print in one place: error fields, SQLSTATE, quoting, local timeouts.

Pure functions, no connection: `ops.db` (connections), the metrics store and the
retention job all use these, so a newcomer finds each rule once.

Quoting exists for the statements that go out as text in one simple-protocol round
trip (pg8000's parameterised path takes three) and for names, which no protocol
can pass as parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pg8000.exceptions import DatabaseError


def error_fields(exc: BaseException | None) -> Mapping[str, Any]:
    """The fields of the server's error reply (C: SQLSTATE, M: message, D: detail, ...);
    empty for anything else. pg8000 passes them as the exception's first argument."""
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return exc.args[0]
    return {}


def server_message(exc: BaseException | None) -> str:
    """What the server said, as `message (SQLSTATE)`; "" when it was not the server."""
    fields = error_fields(exc)
    return f"{fields.get('M', 'server error')} ({fields.get('C', '?')})" if fields else ""


def sqlstate(exc: BaseException | None) -> str:
    """The server's SQLSTATE for a pg8000 DatabaseError; "" for anything else."""
    return str(error_fields(exc).get("C", ""))


def quote_ident(name: str) -> str:
    """One identifier (a table, a column), double-quoted: any name, exactly as written."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """An E'' string literal: correct whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def set_local_timeouts(
    *, lock_timeout_ms: int | None = None, statement_timeout_ms: int | None = None
) -> str:
    """`SET LOCAL` statements for the timeouts given, joined by "; " ("" for none). They end
    with the transaction, so a connection shared by the whole container keeps its defaults."""
    statements = []
    if lock_timeout_ms is not None:
        statements.append(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
    if statement_timeout_ms is not None:
        statements.append(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
    return "; ".join(statements)
