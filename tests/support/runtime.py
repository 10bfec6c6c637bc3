"""The handlers as Lambda loads them, invoked with API Gateway proxy events, and a reset
that makes the next invocation start like a new container."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tools import ROOT
from tools.apigw import proxy_event
from tools.runtime import LambdaContext, load_handler

FunctionInvoker = Callable[..., tuple[int, dict[str, str], Any]]


def reset_runtime() -> None:
    import sys

    from ops import auth, db, metrics
    from ops.config import settings

    settings.cache_clear()
    auth.reset()
    db.reset()
    metrics.reset()
    live_gauges = sys.modules.get("live_gauges")  # the metrics function's, once loaded
    if live_gauges is not None:
        live_gauges.forget_logged()


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
