"""Where local runs keep their data: `.local/` (the embedded database, make prom's files);
`LOCAL_DATA_DIR` moves it (tests use a temporary one)."""

from __future__ import annotations

from pathlib import Path

from ops.config import settings
from tools import ROOT


def local_dir() -> Path:
    return Path(settings().local_data_dir or ROOT / ".local")
