"""Locating the external binaries some tests need (Debian's `prometheus`,
`prometheus-alertmanager` and `pgbouncer` packages).

Locally, a missing binary skips the test with the install command; in CI
(`CI` set) it fails, because CI installs it and a skip there would hide a gap.
"""

from __future__ import annotations

import os
import shutil

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
