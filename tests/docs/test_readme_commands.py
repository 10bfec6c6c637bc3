"""Every local command of README.md and docs/*.md, run as written from a fresh clone, without
DATABASE_URL.

The clone is a `git clone` of this checkout (committed files only, as a new user gets
them). Its `.venv` and `.venv-sam` are folders of links to the venvs running this test,
stamped fresh, so `make` finds them installed instead of spending minutes on pip (the
install itself is what .ci/run measures from a real fresh clone).
"""

from __future__ import annotations

import contextlib
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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.binaries import lambda_python, require_binary
from tests.support.doc_commands import user_doc_commands, user_docs
from tools import ROOT
from tools.localdb.pgcluster import PgCluster, free_port

pytestmark = pytest.mark.slow

TOKEN = "local-dev-token"  # what the README exports and the sample events carry
HEALTH_INVOKE = "make invoke FN=HealthFunction EVENT=events/health.json"

# Commands shown for AWS (they need an account) or run elsewhere, and why.
NOT_RUN_HERE = {
    "make test": "this suite itself; CI runs it from a fresh clone (.ci/run)",
    "make bench": "minutes of benchmarks in a venv of their own; results in benchmarks/README.md",
}


def needs_docker(command: str) -> bool:
    """`sam local` runs each function in a container: no Docker daemon here (docs/local.md says so);
    test_sam_local_commands checks their options, and tests/deploy/test_build.py what the
    functions get from the env-vars file."""
    return command.startswith(".venv-sam/bin/sam local ")


def needs_aws(command: str) -> bool:
    return (
        command.startswith(("aws ", ".venv-sam/bin/sam deploy", "AWS_REGION="))
        or "$HealthUrl" in command
        or "$MetricsUrl" in command
        or "user:pass@" in command  # the deployed database, reached through a tunnel
    )


def _link_venv(source: Path, target: Path) -> None:
    """A venv folder whose entries link to `source`'s, with a fresh install stamp."""
    target.mkdir()
    for entry in source.iterdir():
        if entry.name != ".installed":
            (target / entry.name).symlink_to(entry.resolve())
    (target / ".installed").touch()


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="readme-clone-"))
    repo = work / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)
    _link_venv(Path(sys.prefix), repo / ".venv")
    sam_venv = (ROOT / ".venv-sam").resolve()
    if (sam_venv / "bin" / "sam").exists():
        _link_venv(sam_venv, repo / ".venv-sam")
    yield repo
    datadir = repo / ".local" / "pgdata"
    if PgCluster(datadir, port=0).running:
        PgCluster(datadir, port=0).stop("immediate")
    subprocess.run(["rm", "-rf", str(work)], check=False)


def clean_env(**extra: str) -> dict[str, str]:
    """A new user's shell: no database, token or data folder configured."""
    drop = ("DATABASE_URL", "DB_SECRET_ARN", "METRICS_AUTH_TOKEN", "LOCAL_DATA_DIR", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MAKE")}
    return {**env, **extra}


def sh(
    repo: Path, command: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_quiet(stderr: str) -> None:
    """Nothing on stderr but the functions' JSON log lines: no warning, no traceback."""
    stray = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert stray == [], stray


def embedded_running(repo: Path) -> bool:
    return PgCluster(repo / ".local" / "pgdata", port=0).running


def start_run(repo: Path, command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", command],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def wait_up(proc: subprocess.Popen[str], port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=5):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError("make run did not come up")


def stop_run(proc: subprocess.Popen[str], sig: int) -> str:
    os.killpg(proc.pid, sig)
    output, _ = proc.communicate(timeout=60)
    assert "stopping" in output, output
    lines = [line for line in output.splitlines() if not line.startswith("{")]
    noise = [
        line
        for line in lines
        if re.search(r"Traceback|KeyboardInterrupt|Warning|make: \*\*\*|Error", line)
    ]
    assert noise == [], noise
    return output


def test_every_readme_command_is_run_here_or_needs_aws() -> None:
    """A command added to README.md or docs/*.md must be added to this test (or need AWS)."""
    assert user_docs()[0].name == "README.md" and len(user_docs()) > 1
    handled = {
        "make run",
        "make invoke FN=RetentionFunction EVENT=events/retention-dry-run.json",
        HEALTH_INVOKE,
        "make migrate",
        "make lint",
        "make build",
        "make validate",
        "make prom",
        "make",
        "export METRICS_AUTH_TOKEN=local-dev-token",
        "DATABASE_URL=postgresql://app:secret@127.0.0.1:5432/app make run",
        ".venv/bin/python -m tools.standins.sentry_ingest",
        ".venv/bin/python -m tools.standins.otlp_receiver",
    }
    for command in user_doc_commands():
        if command in NOT_RUN_HERE or needs_aws(command) or needs_docker(command):
            continue
        if command in handled:
            continue
        if command.startswith("curl -s localhost:3000/"):
            continue  # the tour, below
        if command.startswith("SENTRY_DSN=http://… "):
            continue  # with the DSN sentry_ingest printed, below
        if command.startswith("OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://… "):
            continue  # with the endpoint otlp_receiver printed, below
        raise AssertionError(f"README/docs command not exercised by this test: {command}")


def test_readme_commands_from_a_fresh_clone(clone: Path, database_url: str) -> None:
    port = free_port()
    env = clean_env(PORT=str(port))
    commands = user_doc_commands(clone)

    # Without `make run`: migrate and invoke start the embedded database and stop it after.
    migrate = sh(clone, "make migrate", env)
    assert migrate.returncode == 0, migrate.stderr
    assert "(embedded)" in migrate.stdout
    assert_quiet(migrate.stderr)
    invoke_cmd = "make invoke FN=RetentionFunction EVENT=events/retention-dry-run.json"
    assert invoke_cmd in commands
    invoke = sh(clone, invoke_cmd, env)
    assert invoke.returncode == 0, invoke.stderr
    assert json.loads(invoke.stdout)["dryRun"] is True
    assert_quiet(invoke.stderr)
    assert HEALTH_INVOKE in commands
    health = sh(clone, HEALTH_INVOKE, env)
    assert health.returncode == 0 and json.loads(health.stdout)["statusCode"] == 200, health.stderr
    assert any('"type":"request"' in line for line in health.stderr.splitlines()), health.stderr
    assert_quiet(health.stderr)
    assert not embedded_running(clone), "migrate/invoke left the database they started"

    lint = sh(clone, "make lint", env)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert not re.search(r"(?i)warning|traceback", lint.stdout + lint.stderr)

    # The tour, with the token the README exports (the sample events' token).
    assert f"export METRICS_AUTH_TOKEN={TOKEN}" in commands
    tour_env = {**env, "METRICS_AUTH_TOKEN": TOKEN}
    run = start_run(clone, "make run", tour_env)
    try:
        wait_up(run, port)
        tour = [c for c in commands if c.startswith("curl -s localhost:3000/")]
        assert len(tour) >= 6
        for command in tour:
            local = command.replace("localhost:3000", f"127.0.0.1:{port}")
            out = sh(clone, f"{local} -w '\\n%{{http_code}}'", tour_env)
            body, _, status = out.stdout.rpartition("\n")
            assert out.returncode == 0 and status == "200", (command, out.stdout, out.stderr)
            assert body, command
        # Without the token the protected routes say 401, as in AWS.
        denied = sh(
            clone, f"curl -s -o /dev/null -w '%{{http_code}}' 127.0.0.1:{port}/metrics", env
        )
        assert denied.stdout == "401"
        # With `make run` up, invoke and migrate use its database and leave it running.
        again = sh(clone, invoke_cmd, env)
        assert again.returncode == 0, again.stderr
        assert sh(clone, "make migrate", env).returncode == 0
        assert embedded_running(clone)
    finally:
        output = stop_run(run, signal.SIGTERM)  # what `kill -- -PGID` or a supervisor sends
    assert "/metrics and /health/detailed: token-protected (METRICS_AUTH_TOKEN" in output
    assert not embedded_running(clone), "make run left its database running"

    # Ctrl-C in the terminal: SIGINT to the foreground process group.
    run = start_run(clone, "make run", env)
    try:
        wait_up(run, port)
    finally:
        output = stop_run(run, signal.SIGINT)
    assert "/metrics and /health/detailed: open, no token" in output
    assert not embedded_running(clone)

    # Your own database: the README's command with this test's server in it.
    own = next(c for c in commands if c.startswith("DATABASE_URL=") and c.endswith("make run"))
    url = own.split()[0].split("=", 1)[1]
    run = start_run(clone, own.replace(url, database_url), env)
    try:
        wait_up(run, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok", "db": "connected"}
    finally:
        output = stop_run(run, signal.SIGTERM)
    assert "DATABASE_URL" in output and not embedded_running(clone)


def test_readme_sentry_stand_in_commands(clone: Path) -> None:
    commands = user_doc_commands(clone)
    assert ".venv/bin/python -m tools.standins.sentry_ingest" in commands
    ingest = start_run(clone, ".venv/bin/python -m tools.standins.sentry_ingest", clean_env())
    try:
        assert ingest.stdout is not None
        dsn = ""
        deadline = time.monotonic() + 60
        while not dsn and time.monotonic() < deadline:
            match = re.search(r"SENTRY_DSN=(\S+)", ingest.stdout.readline())
            dsn = match.group(1) if match else ""
        assert dsn, "sentry_ingest printed no DSN"
        failing = next(c for c in commands if c.startswith("SENTRY_DSN=http://… "))
        out = sh(clone, failing.replace("http://…", dsn, 1), clean_env())
        # The run fails on purpose: two lines from invoke, exit 2, and the event is sent.
        assert out.returncode == 2, out.stderr
        own_lines = [line for line in out.stderr.splitlines() if not line.startswith("{")]
        assert len(own_lines) <= 3 and "RetentionFunction failed" in own_lines[0], own_lines
    finally:
        os.killpg(ingest.pid, signal.SIGTERM)
        ingest.communicate(timeout=30)


def test_readme_trace_receiver_commands(clone: Path) -> None:
    commands = user_doc_commands(clone)
    assert ".venv/bin/python -m tools.standins.otlp_receiver" in commands
    receiver = start_run(clone, ".venv/bin/python -m tools.standins.otlp_receiver", clean_env())
    try:
        assert receiver.stdout is not None
        endpoint = ""
        deadline = time.monotonic() + 60
        while not endpoint and time.monotonic() < deadline:
            match = re.search(r"OTEL_EXPORTER_OTLP_ENDPOINT=(\S+)", receiver.stdout.readline())
            endpoint = match.group(1) if match else ""
        assert endpoint, "otlp_receiver printed no endpoint"
        traced = next(c for c in commands if c.startswith("OTEL_TRACES_EXPORTER=otlp "))
        out = sh(clone, traced.replace("http://…", endpoint, 1), clean_env())
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["dryRun"] is True
        printed, deadline = "", time.monotonic() + 30  # the receiver prints as spans arrive
        while '"retention run"' not in printed and time.monotonic() < deadline:
            printed += receiver.stdout.readline()
    finally:
        os.killpg(receiver.pid, signal.SIGTERM)
        receiver.communicate(timeout=30)
    names = {json.loads(line)["name"] for line in printed.splitlines() if line.startswith("{")}
    assert "retention run" in names, (printed[-2000:], out.stderr[-2000:])


def test_readme_build_and_validate(clone: Path) -> None:
    if not (clone / ".venv-sam").exists():
        pytest.skip("no .venv-sam to link (test_build.py creates it with `make sam-cli`)")
    env = clean_env()
    if lambda_python() is None:  # the README's promise: two lines saying how to get one
        out = sh(clone, "make build", env)
        assert out.returncode == 2 and "pyenv install 3.13" in out.stderr, out.stderr
        env["LAMBDA_PYTHON"] = "none"  # the README's way to ship without, to go on here
    for command in ("make validate", "make build"):
        assert command in user_doc_commands(clone)
        out = sh(clone, command, env, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert not re.search(r"(?i)warning|traceback", out.stdout + out.stderr), command
    assert (clone / ".aws-sam" / "build" / "template.yaml").exists()
    # The deploy lines need an account; the CLI they call is there and knows their options.
    deploys = [c for c in user_doc_commands(clone) if c.startswith(".venv-sam/bin/sam deploy")]
    assert deploys
    help_text = sh(clone, ".venv-sam/bin/sam deploy --help", env).stdout
    for command in deploys:
        for option in command.split()[2:]:
            assert option in help_text, (command, option)


def test_sam_local_commands(clone: Path) -> None:
    """The docs' `sam local` lines (Docker: not run here) use options their subcommand
    has, functions the template has, and files the clone has."""
    if not (clone / ".venv-sam").exists():
        pytest.skip("no .venv-sam to link (test_build.py creates it with `make sam-cli`)")
    from tools.runtime.template import functions, load_template

    names = set(functions(load_template(clone / "template.yaml")))
    commands = [c for c in user_doc_commands(clone) if needs_docker(c)]
    assert {c.split()[2] for c in commands} == {"invoke", "start-api"}
    for command in commands:
        words = command.split()
        if words[2] == "invoke":
            assert words[3] in names, command
        help_text = sh(clone, " ".join([*words[:3], "--help"]), clean_env()).stdout
        for i, word in enumerate(words):
            if word.startswith("-"):
                assert re.search(rf"(^|[ ,]){re.escape(word)}[ ,]", help_text, re.M), word
            if word in ("-e", "--event", "--env-vars"):
                assert (clone / words[i + 1]).is_file(), command


# -- the error promise of every local command, from the fresh clone ---------------------


def test_make_alone_lists_every_target_with_its_description(clone: Path) -> None:
    makefile = (clone / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z-]*):(.*)$", makefile, re.M)
    assert targets
    undocumented = [name for name, rest in targets if "## " not in rest]
    assert undocumented == [], "every target has a `## what it does` comment"
    out = sh(clone, "make", clean_env())
    assert out.returncode == 0 and out.stderr == "", out.stderr
    for name, rest in targets:
        description = rest.split("## ", 1)[1].strip()
        assert re.search(rf"^  make {name} +{re.escape(description)}$", out.stdout, re.M), name


def assert_two_lines_and_exit_2(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    """What failed and what to do, in at most two lines, exit 2: nothing else but the line
    make adds (`make: *** [Makefile:N: run] Error 2`), no traceback, nothing on stdout."""
    own = [line for line in out.stderr.splitlines() if not line.startswith("make: *** ")]
    assert out.returncode == 2, out.stdout + out.stderr
    assert 1 <= len(own) <= 2 and out.stdout == "", out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


BAD_SETTINGS = {
    "METRICS_FLUSH_INTERVAL_S=abc": "METRICS_FLUSH_INTERVAL_S must be a number",
    "PORT=abc": "PORT must be a positive whole number",
    "PORT=70000": "PORT must be a positive whole number",
}


@pytest.mark.parametrize("setting", sorted(BAD_SETTINGS))
@pytest.mark.parametrize(
    "command", ["make run", "make migrate", "make invoke FN=HealthFunction", "make bench"]
)
def test_a_bad_setting_is_two_lines_and_exit_2(clone: Path, command: str, setting: str) -> None:
    name, value = setting.split("=")
    out = sh(clone, command, clean_env(**{name: value}), timeout=120)
    assert_two_lines_and_exit_2(out, BAD_SETTINGS[setting], "Fix that setting")
    assert not embedded_running(clone)


def test_make_run_on_a_taken_port_is_two_lines_and_exit_2(clone: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = sh(clone, f"make run PORT={port}", clean_env())
    assert_two_lines_and_exit_2(out, f"cannot listen on 127.0.0.1:{port}", "PORT=")
    assert not embedded_running(clone)


@pytest.mark.parametrize("command", ["make run", "make migrate", HEALTH_INVOKE])
def test_an_unreachable_database_is_two_lines_and_exit_2(
    clone: Path, command: str, closed_port: int
) -> None:
    url = f"postgresql://app:secret@127.0.0.1:{closed_port}/app"
    out = sh(clone, command, clean_env(DATABASE_URL=url, PORT=str(free_port())), timeout=120)
    if command.startswith("make invoke"):  # invoke runs the function anyway: its 503 is the point
        assert out.returncode == 0 and json.loads(out.stdout)["statusCode"] == 503, out.stderr
        assert "migrations not applied: cannot connect" in out.stderr
        return
    assert_two_lines_and_exit_2(out, "connection refused", "DATABASE_URL")


# -- make prom: a local Prometheus with the shipped rules, scraping make run -------------


def prom_query(port: int, promql: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{query}", timeout=5) as r:
        result: list[dict[str, Any]] = json.loads(r.read())["data"]["result"]
    return result


def test_the_local_prometheus_config_passes_promtool_as_shipped(clone: Path) -> None:
    promtool = require_binary("promtool")
    out = subprocess.run(
        [promtool, "check", "config", "infra/monitoring/prometheus.local.yml"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 3 rule files found" in out.stdout + out.stderr


def test_make_prom_scrapes_make_run_with_the_shipped_rules(clone: Path) -> None:
    """`make run` with a token, `make prom` beside it: Prometheus scrapes it (`up` 1, so the
    token reached the scrape) and evaluates the shipped alert, recording and SLO rules."""
    require_binary("prometheus")
    port, prom_port = free_port(), free_port()
    env = clean_env(PORT=str(port), METRICS_AUTH_TOKEN=TOKEN)
    assert "make prom" in user_doc_commands(clone)
    run = start_run(clone, "make run", env)
    prom, prom_output = None, ""
    try:
        wait_up(run, port)
        prom = start_run(clone, f"make prom PROM_PORT={prom_port}", env)
        deadline = time.monotonic() + 120  # the first scrape comes within one 15 s interval
        up: list[dict[str, Any]] = []
        while not up and time.monotonic() < deadline:
            assert prom.poll() is None, prom.communicate()[0]
            with contextlib.suppress(OSError):
                up = prom_query(prom_port, 'up{job="realestate-backend"} == 1')
            time.sleep(0.5)
        assert up, "Prometheus never scraped make run successfully"
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        monitoring = clone / "infra" / "monitoring"
        loaded = {Path(g["file"]) for g in groups}
        assert loaded == {
            monitoring / f for f in ("alerts.yml", "recording-rules.yml", "slo.rules.yml")
        }
        token_file = clone / ".local" / "prometheus" / "metrics-token"
        assert token_file.read_text() == TOKEN and token_file.stat().st_mode & 0o077 == 0
    finally:
        if prom is not None:
            prom_output = stop_run(prom, signal.SIGINT)  # Ctrl-C
        stop_run(run, signal.SIGTERM)
    assert f"http://127.0.0.1:{prom_port}/alerts" in prom_output
    assert not embedded_running(clone)


def test_make_prom_on_a_taken_port_is_two_lines_and_exit_2(clone: Path) -> None:
    require_binary("prometheus")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = sh(clone, f"make prom PROM_PORT={port}", clean_env())
    assert_two_lines_and_exit_2(out, f"cannot listen on 127.0.0.1:{port}", "PROM_PORT=")


def test_make_prom_without_prometheus_says_how_to_install_it(clone: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [shutil.which("make") or "make", "prom"],
        cwd=clone,
        env=clean_env(PATH=str(tmp_path)),  # nothing on PATH: no prometheus either
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_two_lines_and_exit_2(out, "no `prometheus` on PATH", "apt-get install prometheus")
