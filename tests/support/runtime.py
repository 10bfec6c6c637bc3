"""The handlers as Lambda loads them, invoked with API Gateway proxy events, a reset
that makes the next invocation start like a new container, and the types of the
fixtures that do so (tests/conftest.py); the local tools run as a developer runs them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Protocol

from tools import PYTHONPATH, ROOT
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext, load_handler

# A handler as Lambda calls it: (event, context) -> the response. The event is whatever
# the invocation carried (an API function answers a malformed one with a 400).
Handler = Callable[[object, LambdaContext], dict[str, Any]]
# (status, headers, body): the body parsed when it is JSON, else the text ("" for HEAD).
ApiReply = tuple[int, dict[str, str], Any]
# The `log_lines` fixture: every JSON line logged so far, parsed.
LogLines = Callable[[], list[dict[str, Any]]]


class FunctionInvoker(Protocol):
    """A function's handler bound for `call_api` (the `health_api` fixture)."""

    def __call__(
        self,
        path: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        resource: str | None = None,
        timeout_s: float = 10,
    ) -> ApiReply: ...


class AppEnv(Protocol):
    """The `app_env` fixture: `app_env(NAME="value", ...)` sets them for a new container."""

    def __call__(self, **variables: str) -> None: ...


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


def function_handler(package: str) -> Handler:
    """The handler of the function whose package is `package` (`health`, `metrics`, ...)."""
    return load_handler(f"{package}.app.lambda_handler")


def call_api(
    handler: Handler,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    resource: str | None = None,
    timeout_s: float = 10,
) -> ApiReply:
    event = proxy_event(method=method, path=path, resource=resource or path, headers=headers)
    resp = handler(event, LambdaContext("test-function", timeout_s))
    body = resp["body"]
    ctype = resp["headers"].get("Content-Type", "")
    parsed = json.loads(body) if "json" in ctype and body else body  # HEAD: no body
    return resp["statusCode"], resp["headers"], parsed


def log_handler() -> logging.StreamHandler[Any]:
    """The stream handler of the functions' Powertools logger (`setStream` to capture it)."""
    from ops.log import logger

    handler = logger.registered_handler  # typed as any Handler; ours is a StreamHandler
    assert isinstance(handler, logging.StreamHandler), handler
    return handler


def run_tool(
    *args: str,
    env: dict[str, str],
    timeout: float = 120,
    unset: tuple[str, ...] = ("DATABASE_URL", "DB_SECRET_ARN"),
) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` from the project's root, as a developer runs it: this process's
    environment without the variables starting with `unset`, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": PYTHONPATH, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
