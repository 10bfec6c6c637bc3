"""A function run as AWS runs it: `python -m awslambdaric health.app.lambda_handler` in
the functions' folder (LAMBDA_TASK_ROOT, as /var/task), the layer on PYTHONPATH (as
/opt/python), against a loopback Runtime API + Extensions API (tools.runtime.runtime_api), with
Lambda's shutdown sequence (SIGTERM, SIGKILL 500 ms later) and freezes (SIGSTOP/SIGCONT).

awslambdaric waits for the next invocation on a background thread only for the runtimes
listed in its LambdaConfigProvider (keyed on AWS_EXECUTION_ENV); otherwise on the main
thread, inside its C extension: `execution_env` (POLLING) picks the mode.
Used by the tests under tests/metrics and by benchmarks/suite_shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from tools import LAYER_DIR
from tools.runtime.apigw import proxy_event
from tools.runtime.runtime_api import RuntimeApiStandIn
from tools.runtime.template import functions

SHUTDOWN_KILL_S = 0.5  # Lambda's SIGKILL after SIGTERM with an internal extension registered
# AWS_EXECUTION_ENV by the way awslambdaric 4.2.2 then polls: a runtime it lists for thread
# polling, one it does not, and none (a container image): the main thread too.
POLLING: dict[str, str | None] = {
    "thread": "AWS_Lambda_python3.13",
    "main": "AWS_Lambda_python3.11",
    "unset": None,
}


@dataclass(frozen=True)
class Ending:
    returncode: int
    seconds: float  # SIGTERM to exit
    killed: bool  # still running at +500 ms: Lambda's SIGKILL ended it


class RicFunction:
    """One container of a template function under the real runtime client."""

    def __init__(
        self,
        function: str,
        env: Mapping[str, str],
        *,
        execution_env: str | None = POLLING["thread"],
        register_status: int | None = 200,
        capture: bool = True,
        bootstrap: list[str] | None = None,
    ) -> None:
        spec = functions()[function]
        self.spec = spec
        self.api = RuntimeApiStandIn(function, register_status)
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_LAMBDA_", "AWS_EXECUTION_ENV", "LAMBDA_", "PYTHON"))
        }
        environment.update(spec.environment)
        environment.update(
            {
                "AWS_LAMBDA_RUNTIME_API": self.api.address,
                "AWS_LAMBDA_FUNCTION_NAME": function,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
                "AWS_LAMBDA_LOG_STREAM_NAME": "ric",
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                "_HANDLER": spec.handler,
                "PYTHONPATH": str(LAYER_DIR),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if execution_env is not None:
            environment["AWS_EXECUTION_ENV"] = execution_env
        environment.update(env)
        # The function's stdout and stderr (logs, EMF), for json_lines(); else discarded.
        self.log: IO[str] | None = (
            tempfile.TemporaryFile(mode="w+") if capture else None  # noqa: SIM115 - close()
        )
        output = self.log if self.log is not None else subprocess.DEVNULL
        self.started_at = time.monotonic()
        # `bootstrap`: another command line in place of awslambdaric's (benchmark variants).
        self.proc = subprocess.Popen(
            bootstrap or [sys.executable, "-m", "awslambdaric", spec.handler],
            cwd=spec.code_dir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )

    def wait_init(self, timeout_s: float = 30.0) -> float:
        """Seconds from the process start to the runtime's first request for an invocation
        (Lambda's Init ends then, once every extension has asked for its next event)."""
        deadline = time.monotonic() + timeout_s
        while not self.api.polled.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the function exited during init ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"init did not end within {timeout_s:g} s")
        assert self.api.first_poll_at is not None
        return self.api.first_poll_at - self.started_at

    def invoke(self, event: Any, timeout_s: float | None = None, wait_s: float = 30.0) -> Any:
        """The handler's response (raises with the error reply)."""
        invocation = self.api.submit(event, self.spec.timeout_s if timeout_s is None else timeout_s)
        if not invocation.answered.wait(wait_s):
            raise TimeoutError(f"no answer within {wait_s:g} s")
        if invocation.outcome != "response":
            raise RuntimeError(f"the invocation failed: {json.dumps(invocation.body)[:2000]}")
        return invocation.body

    def get(self, path: str, timeout_s: float | None = None) -> tuple[int, Any]:
        """An API Gateway GET of `path`: (status, parsed body)."""
        reply = self.invoke(proxy_event(method="GET", path=path, resource=path), timeout_s)
        body = reply.get("body") or ""
        ctype = (reply.get("headers") or {}).get("Content-Type", "")
        return int(reply["statusCode"]), json.loads(body) if "json" in ctype else body

    def json_lines(self) -> list[dict[str, Any]]:
        """Every JSON line the function printed so far (Powertools logs, EMF)."""
        if self.log is None:
            return []
        self.log.seek(0)
        return [json.loads(line) for line in self.log if line.startswith("{")]

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def shutdown(self, kill_after_s: float = SHUTDOWN_KILL_S) -> Ending:
        """Lambda's shutdown: SIGTERM, then SIGKILL if the process still runs."""
        # A blocking wait on its own thread sees the exit at once (Popen.wait(timeout)
        # polls, up to 50 ms late).
        exited = threading.Event()
        ended_at: list[float] = []

        def reap() -> None:
            self.proc.wait()
            ended_at.append(time.monotonic())
            exited.set()

        waiter = threading.Thread(target=reap, daemon=True)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        waiter.start()
        killed = not exited.wait(kill_after_s)
        if killed:
            self.proc.kill()
        waiter.join(10)
        return Ending(self.proc.returncode, ended_at[0] - started, killed)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.api.close()
        if self.log is not None:
            self.log.close()
