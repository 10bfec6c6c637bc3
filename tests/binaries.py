"""Locating the external binaries some tests need (Debian's `prometheus` package).

Locally, a missing binary skips the test with the install command; in CI
(`CI` set) it fails, because CI installs it and a skip there would hide a gap.
"""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = "apt-get install prometheus  (provides promtool and prometheus)"


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found; {INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
