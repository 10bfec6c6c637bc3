"""The handlers as Lambda loads them, invoked with API Gateway proxy events, and a reset
that makes the next invocation start like a new container."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext, load_handler

FunctionInvoker = Callable[..., tuple[int, dict[str, str], Any]]


def reset_runtime() -> None:
    import sys

    from ops import auth, db, metrics
    from ops.config import settings

    settings.cache_clear()
    auth.reset()
    db.reset()
    metrics.reset()
    live_gauges = sys.modules.get("metrics.live_gauges")  # once the metrics function is loaded
    if live_gauges is not None:
        live_gauges.forget_logged()


def function_handler(package: str) -> Callable[..., Any]:
    """The handler of the function whose package is `package` (`health`, `metrics`, ...)."""
    return load_handler(f"{package}.app.lambda_handler")


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
