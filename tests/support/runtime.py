"""The handlers as Lambda loads them, invoked with API Gateway proxy events, and a reset
that makes the next invocation start like a new container."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.apigw import proxy_event
from tools.pgcluster import PgCluster
from tools.runtime import LambdaContext, load_handler

FunctionInvoker = Callable[..., tuple[int, dict[str, str], Any]]


@contextmanager
def running_cluster(*, durable: bool = False) -> Iterator[PgCluster]:
    """A fresh cluster in its own temporary folder (kept out of the project tree), started
    and ready; destroyed (stopped, its folder removed) afterwards. `durable`: see PgCluster."""
    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="ops-pg-")) / "data", durable=durable)
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    try:
        yield cluster
    finally:
        cluster.destroy()


def reset_runtime() -> None:
    from ops import auth, db, metrics
    from ops.config import settings

    settings.cache_clear()
    auth.reset()
    db.reset()
    metrics.reset()


def function_handler(name: str) -> Callable[..., Any]:
    return load_handler(ROOT / "functions" / name)


def call_api(
    handler: Callable[..., Any],
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    resource: str | None = None,
    timeout_s: float = 10,
) -> tuple[int, dict[str, str], Any]:
    event = proxy_event(method=method, path=path, resource=resource or path, headers=headers)
    resp = handler(event, LambdaContext("test-function", timeout_s))
    body = resp["body"]
    ctype = resp["headers"].get("Content-Type", "")
    parsed = json.loads(body) if "json" in ctype and body else body  # HEAD: no body
    return resp["statusCode"], resp["headers"], parsed
