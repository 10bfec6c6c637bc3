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
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.runtime import FunctionSpec


def spawn(
    spec: FunctionSpec, env: Mapping[str, str], stderr: int | IO[Any] | None = None
) -> subprocess.Popen[str]:
    """A worker process for `spec`, with the function's environment from template.yaml
    and `env` on top; text pipes for the protocol, `stderr` where the handler prints."""
    from tools import ROOT
    from tools.runtime import local_emf_default

    environment = {**os.environ, **spec.environment, **env}
    local_emf_default(environment)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), environment.get("PYTHONPATH")])
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.worker",
            str(spec.code_dir),
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
    code_dir, handler_name, function_name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    memory_mb = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    # Ctrl-C reaches the whole process group; the gateway decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import tools  # noqa: F401 - puts the layer on sys.path
    from ops.metrics import install_shutdown_flush
    from tools.runtime import LambdaContext, load_handler

    # A long-lived process, unlike a frozen Lambda container: idle deltas flush on a
    # timer; SIGTERM and the end of stdin (the gateway stopping) flush what is left.
    install_shutdown_flush(idle_flush=True)
    handler = load_handler(code_dir, handler_name)
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
