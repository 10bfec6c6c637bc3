"""Debian's PgBouncer in transaction mode in front of a PgCluster: the local stand-in for RDS
Proxy (tests and the fleet benchmark).

Stock settings but for what running it at all needs (where it listens, which database,
who may log in) and `pool_mode = transaction`, which is what RDS Proxy's multiplexing
amounts to: a client keeps a server connection only for the length of a transaction,
so nothing session-scoped (a SET, a prepared statement, a startup parameter) may be
relied on. `reconnect()` makes the point sharper: every server connection is replaced
after its current transaction, so any session state a client left behind is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pg8000.native

from tools.localdb.pgcluster import SUPERUSER, SYSTEM_USER, PgCluster, free_port, listening

BINARY = "pgbouncer"  # Debian's package of the same name
DATABASE = "app"  # the name clients connect to; pgbouncer maps it to the cluster's database


class PgBouncer:
    """One pgbouncer process on 127.0.0.1 and a free port; `url` is what clients use."""

    def __init__(
        self,
        cluster: PgCluster,
        database: str,
        *,
        pool_size: int = 20,
        max_client_conn: int | None = None,
    ) -> None:
        """`max_client_conn`: None keeps pgbouncer's stock limit (100 client connections)."""
        self.cluster = cluster
        self.max_client_conn = max_client_conn
        self.database = database
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ops-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        password = quote(self.cluster.password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def _write_config(self) -> Path:
        userlist = self.dir / "userlist.txt"
        userlist.write_text(f'"{SUPERUSER}" "{self.cluster.password}"\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{DATABASE} = host=127.0.0.1 port={self.cluster.port} dbname={self.database}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {userlist}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            + (f"max_client_conn = {self.max_client_conn}\n" if self.max_client_conn else "")
            + f"admin_users = {SUPERUSER}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        if os.geteuid() == 0:  # pgbouncer refuses to run as root; it runs as the cluster's user
            for path in (self.dir, userlist, ini):
                shutil.chown(path, SYSTEM_USER)
        return ini

    def start(self, timeout: float = 30.0) -> None:
        ini = self._write_config()
        user = ["-u", SYSTEM_USER] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [BINARY, "-q", *user, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()[-2000:]}")
            if listening(self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"pgbouncer did not listen on port {self.port}")

    def admin_connection(self) -> pg8000.native.Connection:
        """A connection to pgbouncer's admin console (SHOW POOLS, RECONNECT, ...)."""
        return pg8000.native.Connection(
            SUPERUSER,
            password=self.cluster.password,
            host="127.0.0.1",
            port=self.port,
            database="pgbouncer",
            timeout=10,
        )

    def reconnect(self, admin: pg8000.native.Connection | None = None) -> None:
        """Replace every server connection once its current transaction ends."""
        conn = admin or self.admin_connection()
        try:
            conn.run(f"RECONNECT {DATABASE}")
        finally:
            if admin is None:
                conn.close()

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
