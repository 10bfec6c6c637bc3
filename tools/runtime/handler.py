"""A handler called the way Lambda calls it, without Docker: imported by its Handler name,
given a context object with a deadline, in an environment shaped like the template's."""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any


def local_emf_default(environ: MutableMapping[str, str]) -> None:
    """Local runs have no CloudWatch and the template's namespace is a parameter (not
    resolved here): EMF is off on purpose (POWERTOOLS_METRICS_DISABLED), rather than
    warned about as a missing namespace, unless the shell sets either variable."""
    if not environ.get("POWERTOOLS_METRICS_NAMESPACE"):
        environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools use."""

    def __init__(self, function_name: str, timeout_s: float, memory_mb: int = 256) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(handler: str) -> Callable[..., Any]:
    """The function `handler` names (`health.app.lambda_handler`), imported as Lambda's
    runtime imports it: from the path it is given (the functions' folder as /var/task,
    the layer as /opt/python; see tools.PYTHONPATH)."""
    module_name, attr = handler.rsplit(".", 1)
    fn: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    return fn
