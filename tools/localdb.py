"""The database for local runs: DATABASE_URL when set, else an embedded PostgreSQL
kept under .local/pgdata (survives restarts, so local data does too).
`LOCAL_DATA_DIR` moves that folder (tests use a temporary one)."""

from __future__ import annotations

import os
from pathlib import Path

from tools import ROOT
from tools.pgcluster import PgCluster


def local_dir() -> Path:
    return Path(os.environ.get("LOCAL_DATA_DIR") or ROOT / ".local")


def embedded_cluster(datadir: Path | None = None) -> PgCluster:
    folder = local_dir()
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "pgport"
    port = int(port_file.read_text()) if port_file.exists() else None
    cluster = PgCluster(datadir or folder / "pgdata", port=port)
    port_file.write_text(str(cluster.port))
    return cluster


def ensure_database() -> tuple[str, PgCluster | None]:
    """The URL to use, and the cluster if this call started it (so the caller stops it).

    None when DATABASE_URL is set or the embedded server was already running
    (another `make run`): we never stop a server we did not start.
    """
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], None
    cluster = embedded_cluster()
    cluster.init()
    started = not cluster.running
    if started:
        cluster.start()
    cluster.wait_ready()
    return cluster.url(), cluster if started else None
