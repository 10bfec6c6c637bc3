"""One local "container": a process that imports one function and serves invocations.

Protocol: one JSON line per invocation on stdin ({"event", "timeout_s"}), one JSON
line per result on the original stdout. The handler's own stdout (Powertools logs)
goes to stderr, which the gateway passes through to the terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.runtime.template import FunctionSpec


def spawn(
    spec: FunctionSpec, env: Mapping[str, str], stderr: int | IO[Any] | None = None
) -> subprocess.Popen[str]:
    """A worker process for `spec`, with the function's environment from template.yaml
    and `env` on top; text pipes for the protocol, `stderr` where the handler prints."""
    from tools import LAYER_DIR, ROOT
    from tools.runtime.handler import local_emf_default

    environment = {**os.environ, **spec.environment, **env}
    local_emf_default(environment)
    # Lambda's layout: CodeUri as /var/task, the layer as /opt/python; then this tool.
    environment["PYTHONPATH"] = os.pathsep.join(map(str, (spec.code_dir, LAYER_DIR, ROOT)))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.runtime.worker",
            spec.handler,
            spec.logical_id,
            str(spec.memory_mb),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=environment,
        cwd=ROOT,
    )


def main() -> int:
    handler_name, function_name = sys.argv[1], sys.argv[2]
    memory_mb = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    # Ctrl-C reaches the whole process group; the gateway decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from ops.metrics import install_shutdown_flush
    from tools.runtime.handler import LambdaContext, load_handler

    # A long-lived process, unlike a frozen Lambda container: idle deltas flush on a
    # timer; SIGTERM and the end of stdin (the gateway stopping) flush what is left.
    install_shutdown_flush(idle_flush=True)
    handler = load_handler(handler_name)
    for line in sys.stdin:
        request = json.loads(line)
        context = LambdaContext(function_name, float(request["timeout_s"]), memory_mb)
        try:
            reply = {"ok": True, "result": handler(request["event"], context)}
        except Exception as exc:  # Lambda reports an unhandled error; so do we
            reply = {
                "ok": False,
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exc().splitlines(),
            }
        channel.write(json.dumps(reply, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
