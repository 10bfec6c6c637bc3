"""Database connections of a test's own, beside the handlers' shared one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pg8000.native

SQL = Callable[..., list[list[Any]]]  # sql("SELECT ... :name", name=value) -> rows


def runner(conn: pg8000.native.Connection) -> SQL:
    """`conn.run` as the `sql` fixtures hand it out."""
    return lambda query, **params: conn.run(query, **params)
