"""An adopter's `from ops.service import service_api` keeps working after the rename to
ops.wiring (issue 24 item 6), and says what to write instead."""

from __future__ import annotations

import subprocess
import sys

from tools import PYTHONPATH, ROOT


def _import(code: str, *warning_flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *warning_flags, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHONPATH},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_old_import_is_the_same_function_and_warns_with_the_new_one() -> None:
    done = _import(
        "from ops.service import service_api\n"
        "import ops.wiring\n"
        "assert service_api is ops.wiring.service_api\n",
        "-W",
        "always::DeprecationWarning",
    )
    assert done.returncode == 0, done.stderr
    assert "DeprecationWarning" in done.stderr
    assert "from ops.wiring import service_api" in done.stderr


def test_the_new_import_does_not_warn() -> None:
    done = _import("from ops.wiring import service_api", "-W", "error")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_team_can_make_the_old_import_an_error_to_find_its_last_user() -> None:
    done = _import("import ops.service", "-W", "error::DeprecationWarning")
    assert done.returncode != 0
    assert "ops.service is renamed ops.wiring" in done.stderr
