"""The database for local runs: DATABASE_URL when set, else an embedded PostgreSQL
kept under .local/pgdata (survives restarts, so local data does too).
`LOCAL_DATA_DIR` moves that folder (tests use a temporary one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.cli import ToolError
from tools.local_data import local_dir
from tools.localdb.pgcluster import PgCluster


def embedded_cluster(datadir: Path | None = None) -> PgCluster:
    folder = local_dir()
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "pgport"
    port = int(port_file.read_text()) if port_file.exists() else None
    cluster = PgCluster(datadir or folder / "pgdata", port=port)
    if port is not None and not cluster.running and not port_is_free(port):
        cluster = PgCluster(cluster.datadir)  # something else took our port since: a new one
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
    try:
        cluster.init()
        started = not cluster.running
        if started:
            cluster.start()
        cluster.wait_ready()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise ToolError(
            f"the embedded PostgreSQL did not start: {_start_failure(cluster, exc)}",
            f"Its log: {cluster.datadir / 'server.log'}; `rm -rf {local_dir()}` starts afresh "
            "(deletes local data), or set DATABASE_URL to use your own server.",
        ) from None
    return cluster.url(), cluster if started else None


@contextmanager
def local_database() -> Iterator[tuple[str, PgCluster | None]]:
    """`ensure_database`, stopping on exit the embedded server this call started."""
    url, cluster = ensure_database()
    try:
        yield url, cluster
    finally:
        if cluster is not None:
            stop_quietly(cluster)


def stop_quietly(cluster: PgCluster) -> None:
    try:
        cluster.stop()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"the embedded PostgreSQL did not stop cleanly: {_last_line(exc)}", file=sys.stderr)


def port_is_free(port: int) -> bool:
    """Whether a server could listen there now. SO_REUSEADDR as the gateway and PostgreSQL
    set it: connections of a stopped server lingering in TIME_WAIT do not hold the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_failure(cluster: PgCluster, exc: BaseException) -> str:
    """The server log's last FATAL line says why (pg_ctl only says "Examine the log output")."""
    try:
        tail = (cluster.datadir / "server.log").read_text(errors="replace").splitlines()[-20:]
    except OSError:
        tail = []
    fatal = [line.split("FATAL:", 1)[1].strip() for line in tail if "FATAL:" in line]
    return fatal[-1] if fatal else _last_line(exc)


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
