"""Locating the external binaries some tests need (Debian's `prometheus`,
`prometheus-alertmanager` and `pgbouncer` packages).

Locally, a missing binary skips the test with the install command; in CI
(`CI` set) it fails, because CI installs it and a skip there would hide a gap.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Binary -> the Debian package that provides it. Debian calls the Alertmanager
# daemon `prometheus-alertmanager`; upstream releases call it `alertmanager`.
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "pgbouncer": "pgbouncer",
}


def require_binary(*names: str) -> str:
    """The path of the first of `names` on PATH (alternative names of one program)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    package = PACKAGES.get(names[0], names[0])
    message = f"{' or '.join(names)} not found; apt-get install {package}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def lambda_python() -> str | None:
    """A Python 3.13 on this machine, if any (the runtime's: it compiles the build's bytecode),
    found where tools/lambda_bytecode.sh looks."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which("python3.13"),
        *sorted(glob.glob(str(pyenv / "versions" / "3.13*" / "bin" / "python3.13"))),
        "/usr/local/bin/python3.13",
        "/usr/bin/python3.13",
    ]
    check = "import sys; sys.exit(sys.version_info[:2] != (3, 13))"
    for exe in filter(None, candidates):
        try:
            run = subprocess.run([exe, "-I", "-S", "-c", check], capture_output=True, timeout=30)
        except OSError:
            continue
        if run.returncode == 0:
            return exe
    return None


def require_pg_library(bindir: Path, library: str, package: str) -> None:
    """A PostgreSQL server module (`pg_stat_statements`) shipped beside `bindir`'s server:
    skipped locally without it, failed in CI (which installs `package`)."""
    if (bindir.parent / "lib" / f"{library}.so").exists():
        return
    message = f"{bindir.parent / 'lib'} has no {library}.so; apt-get install {package}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
