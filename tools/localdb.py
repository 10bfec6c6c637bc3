"""The database for local runs: DATABASE_URL when set, else an embedded PostgreSQL
kept under .local/pgdata (survives restarts, so local data does too)."""

from __future__ import annotations

import os
from pathlib import Path

from tools import ROOT
from tools.pgcluster import PgCluster

LOCAL_DIR = ROOT / ".local"


def embedded_cluster(datadir: Path | None = None) -> PgCluster:
    port_file = LOCAL_DIR / "pgport"
    LOCAL_DIR.mkdir(exist_ok=True)
    port = int(port_file.read_text()) if port_file.exists() else None
    cluster = PgCluster(datadir or LOCAL_DIR / "pgdata", port=port)
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
