"""The README's run command, end to end: embedded database, migrations, gateway, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.db import SQL
from tests.support.runtime import run_tool
from tools import PYTHONPATH, ROOT
from tools.localdb.pgcluster import PgCluster, free_port

pytestmark = pytest.mark.slow


def http(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def wait_for_gateway(proc: subprocess.Popen[str], port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if http(port, "/health/live")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("gateway did not come up")


def start_serve(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.runtime.serve", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def postgres_running_on(datadir: Path) -> bool:
    return PgCluster(datadir, port=0).running


def _data_folder() -> Iterator[Path]:
    """A LOCAL_DATA_DIR of its own (an embedded database is ~40 MB: removed after)."""
    data = Path(tempfile.mkdtemp(prefix="ops-local-"))
    yield data
    if postgres_running_on(data / "pgdata"):
        PgCluster(data / "pgdata", port=0).stop("immediate")
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    yield from _data_folder()


@pytest.fixture(scope="module")
def local_data() -> Iterator[Path]:
    yield from _data_folder()


def test_run_with_embedded_database_then_ctrl_c_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    data = data_dir
    port = free_port()
    proc = start_serve({"LOCAL_DATA_DIR": str(data), "METRICS_AUTH_TOKEN": "tok"}, port)
    try:
        wait_for_gateway(proc, port)
        status, headers, body = http(port, "/health")
        assert (status, json.loads(body)) == (200, {"status": "ok", "db": "connected"})
        assert headers["Content-Type"] == "application/json"
        assert http(port, "/health/ready")[0] == 200
        assert http(port, "/health/detailed")[0] == 401
        detailed = http(port, "/health/detailed", headers={"Authorization": "Bearer tok"})
        assert detailed[0] == 200
        status, _, body = http(port, "/no/such/route")
        assert status == 404 and json.loads(body)["error"] == "not_found"
        status, headers, _ = http(port, "/health", method="POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD, OPTIONS"
        assert postgres_running_on(data / "pgdata")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopping" in output
    assert not postgres_running_on(data / "pgdata"), "Ctrl-C left PostgreSQL running"
    with pytest.raises(OSError):
        http(port, "/health/live")
    # No worker processes left behind either (this checkout's: they run in its root).
    workers = subprocess.run(
        ["pgrep", "-f", r" -m tools\.runtime\.worker "], capture_output=True, text=True
    ).stdout.split()
    assert [p for p in workers if _cwd(int(p)) == ROOT] == []


def _cwd(pid: int) -> Path | None:
    try:
        return Path(f"/proc/{pid}/cwd").resolve(strict=True)
    except OSError:  # gone since pgrep saw it
        return None


def test_run_uses_database_url_when_set(database_url: str, sql: SQL) -> None:
    port = free_port()
    proc = start_serve({"DATABASE_URL": database_url, "LOCAL_DATA_DIR": "/nonexistent"}, port)
    try:
        wait_for_gateway(proc, port)
        assert http(port, "/health")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "DATABASE_URL" in output
    assert sql("SELECT 1")[0][0] == 1  # the given server is not stopped by us


def test_invoke_runs_a_function_with_an_event_file(database_url: str) -> None:
    out = run_tool(
        "tools.runtime.invoke",
        "HealthFunction",
        "--event",
        "events/health.json",
        env={"DATABASE_URL": database_url},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["statusCode"] == 200
    assert json.loads(result["body"]) == {"status": "ok", "db": "connected"}
    # Logs went to stderr as JSON, not into the result.
    assert any('"type":"request"' in line for line in out.stderr.splitlines())


def test_invoke_rejects_unknown_function() -> None:
    out = run_tool("tools.runtime.invoke", "NoSuchFunction", env={}, timeout=60)
    assert out.returncode == 2
    assert "unknown function" in out.stderr and "HealthFunction" in out.stderr


def assert_clear_failure(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    """One or two lines (what failed and why, then what to do), exit 2, no traceback.
    (A function's own JSON log lines, which `invoke` passes through, do not count.)"""
    lines = [line for line in out.stderr.strip().splitlines() if not line.startswith("{")]
    assert out.returncode == 2, out.stderr
    assert 1 <= len(lines) <= 2, out.stderr
    assert not [line for line in lines if "Traceback" in line or "Warning" in line], lines
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_invoke_and_migrate_without_database_url_use_make_runs_database(data_dir: Path) -> None:
    data = data_dir
    env = {"LOCAL_DATA_DIR": str(data)}
    migrate = run_tool("tools.localdb.migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    assert "(embedded)" in migrate.stdout and migrate.stderr == ""
    assert not postgres_running_on(data / "pgdata"), "migrate left the server it started running"

    invoke = run_tool(
        "tools.runtime.invoke",
        "RetentionFunction",
        "--event",
        "events/retention-dry-run.json",
        env=env,
    )
    assert invoke.returncode == 0, invoke.stderr
    assert json.loads(invoke.stdout)["dryRun"] is True
    assert not postgres_running_on(data / "pgdata"), "invoke left the server it started running"
    # Its stderr is the function's JSON log lines and nothing else (no stray warnings).
    assert all(line.startswith("{") for line in invoke.stderr.splitlines()), invoke.stderr

    # With `make run` up, both use its server and leave it running.
    cluster = PgCluster(data / "pgdata", port=int((data / "pgport").read_text()))
    cluster.start()
    try:
        assert run_tool("tools.localdb.migrate", env=env).returncode == 0
        assert run_tool("tools.runtime.invoke", "HealthFunction", env=env).returncode == 0
        assert postgres_running_on(data / "pgdata")
    finally:
        cluster.destroy()


def test_a_refused_database_is_two_lines_and_exit_2(closed_port: int) -> None:
    url = f"postgresql://u:p@127.0.0.1:{closed_port}/db"
    for tool in (("tools.localdb.migrate",), ("tools.runtime.serve", "--port", str(free_port()))):
        out = run_tool(*tool, env={"DATABASE_URL": url})
        assert_clear_failure(out, "connection refused", "DATABASE_URL")
    out = run_tool(
        "tools.runtime.invoke",
        "RetentionFunction",
        "--event",
        "events/retention-dry-run.json",
        env={"DATABASE_URL": url},
    )
    assert_clear_failure(out, "connection refused")


def test_a_hung_database_says_timed_out_not_refused(blackhole: int) -> None:
    from ops.db import DatabaseUnavailable, connect_url

    with pytest.raises(DatabaseUnavailable, match=r"timed out after 0.5 s") as err:
        connect_url(f"postgresql://u:p@127.0.0.1:{blackhole}/db", timeout_s=0.5)
    assert "refused" not in str(err.value)


def test_user_mistakes_are_two_lines_and_exit_2(tmp_path: Path, data_dir: Path) -> None:
    assert_clear_failure(
        run_tool("tools.runtime.invoke", "HealthFunction", "--event", "events/nope.json", env={}),
        "no event file events/nope.json",
        "health.json",
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_clear_failure(
        run_tool("tools.runtime.invoke", "HealthFunction", "--event", str(bad), env={}),
        "is not JSON",
    )
    assert_clear_failure(
        run_tool("tools.localdb.migrate", env={"DATABASE_URL": "mysql://x@y/z"}), "postgresql://"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = data_dir
        out = run_tool(
            "tools.runtime.serve", "--port", str(port), env={"LOCAL_DATA_DIR": str(data)}
        )
    assert_clear_failure(out, f"cannot listen on 127.0.0.1:{port}", "PORT=")
    assert not postgres_running_on(data / "pgdata")


EVENTS = ROOT / "events"
DEMO_TABLES = ("inbound_events", "chat_sessions")


def event_table() -> dict[str, tuple[str, str]]:
    """events/README.md's table: file -> (function, what it does)."""
    text = (EVENTS / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.-]+\.json)` \| `(\w+)` \| (.+) \|$", text, re.M)
    return {name: (function, what) for name, function, what in rows}


def test_the_events_table_names_every_event_and_its_function() -> None:
    from tools.runtime.template import functions

    table = event_table()
    events = {p.name for p in EVENTS.glob("*.json")} - {"env.local.json"}  # sam local's env
    assert sorted(table) == sorted(events)
    assert {function for function, _ in table.values()} == set(functions())


def _row_counts(url: str) -> dict[str, int]:
    from ops.db import connect_url

    conn = connect_url(url, timeout_s=10)
    try:
        return {t: conn.run(f"SELECT count(*) FROM {t}")[0][0] for t in DEMO_TABLES}
    finally:
        conn.close()


@pytest.mark.parametrize("name", sorted(event_table()))
def test_the_events_said_to_delete_rows_are_the_ones_that_do(
    pg_cluster: PgCluster, name: str
) -> None:
    """On a database with `make run`'s demo rows, an event deletes some iff the table says
    "deletes rows" (the demo has rows past their age on purpose)."""
    from ops.db import connect_url
    from tools.localdb.demo import load_demo
    from tools.localdb.migrate import apply_url

    url = pg_cluster.create_database("events_" + re.sub(r"\W", "_", name))
    apply_url(url)
    conn = connect_url(url, timeout_s=10)
    try:
        assert load_demo(conn)
    finally:
        conn.close()
    before = _row_counts(url)
    function, what = event_table()[name]
    out = run_tool(
        "tools.runtime.invoke", function, "--event", f"events/{name}", env={"DATABASE_URL": url}
    )
    assert out.returncode == 0, out.stderr
    deleted = {t: before[t] - n for t, n in _row_counts(url).items()}
    assert (sum(deleted.values()) > 0) == ("**deletes rows**" in what), (name, deleted)


@pytest.mark.parametrize("name", sorted(event_table()))
def test_every_sample_event_invokes_without_database_url(name: str, local_data: Path) -> None:
    """`make invoke` with each file of events/, as a new user would, on the embedded database,
    with the function events/README.md names."""
    out = run_tool(
        "tools.runtime.invoke",
        event_table()[name][0],
        "--event",
        f"events/{name}",
        env={"LOCAL_DATA_DIR": str(local_data), "METRICS_AUTH_TOKEN": "local-dev-token"},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    if "statusCode" in result:
        assert result["statusCode"] == 200, result  # the events carry the sample token
    else:
        assert result["status"] == "completed", result
    assert all(line.startswith("{") for line in out.stderr.splitlines()), out.stderr
    assert not postgres_running_on(local_data / "pgdata")
