"""How the local tools end: a failure is one or two lines on stderr (what failed and why,
then what to do) and exit code 2, never a traceback; Ctrl-C and SIGTERM end them quietly.

    sys.exit(run("migrate", main))
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

EXIT_FAILED = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class ToolError(Exception):
    """A failure the user can act on: `message` says what failed and why, `hint` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def database_hint() -> str:
    """What to do about a database we could not use, for the way it was configured."""
    if os.environ.get("DATABASE_URL"):
        return (
            "Check that the server in DATABASE_URL is running and reachable, "
            "or unset DATABASE_URL to use the embedded database."
        )
    if os.environ.get("DB_SECRET_ARN"):
        return (
            "Check AWS credentials, AWS_REGION and the secret, and that this machine "
            "reaches the database (inside the VPC or through a tunnel)."
        )
    from tools.local_data import local_dir

    folder = local_dir()
    return (
        f"The embedded database's log: {folder}/pgdata/server.log; `rm -rf {folder}` starts afresh."
    )


def _stop_once_on_signals() -> None:
    """Ctrl-C and SIGTERM end a tool the same way (cleanup runs), once. A signal sent to
    the process group reaches the tool twice under `make`, which passes SIGTERM on to its
    child, and a second Ctrl-C is common: neither may cut the cleanup of the first short."""

    def handler(signum: int, frame: FrameType | None) -> None:
        ignore_further_interrupts()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def ignore_further_interrupts() -> None:
    """Called once a tool is stopping: a second Ctrl-C must not cut its cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def fail(prog: str, message: str, hint: str = "") -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    if hint:
        print(f"  {hint}", file=sys.stderr)
    return EXIT_FAILED


def run(prog: str, main: Callable[[], int]) -> int:
    """Run a tool's main and turn the failures a user can meet into `fail` lines."""
    from ops.db import DatabaseUnavailable

    _stop_once_on_signals()
    try:
        return main()
    except KeyboardInterrupt:
        ignore_further_interrupts()
        return EXIT_INTERRUPTED
    except ToolError as exc:
        return fail(prog, str(exc), exc.hint)
    except DatabaseUnavailable as exc:
        return fail(prog, first_line(exc), database_hint())
    except ValueError as exc:  # a setting that does not parse (ops.config says which)
        return fail(prog, first_line(exc), "Fix that setting (README: Configuration).")
