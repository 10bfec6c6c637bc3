"""The runbook's commands, run as written wherever this machine can run them: curl
against the local gateway in place of the stage URL, the token step on both secret
forms, promtool on the results, the rollback's git steps in a clone, and every `aws`
command through the AWS CLI's own parser (no account needed for that)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.binaries import require_binary
from tests.support.doc_commands import block_commands, inline_commands, user_doc_commands
from tests.support.prometheus import local_gateway
from tools import ROOT
from tools.localdb.pgcluster import free_port

RUNBOOK = ROOT / "infra" / "monitoring" / "README.md"
STAGE_URL = "https://<api-id>.execute-api.<region>.amazonaws.com/prod"
TOKEN = "runbook-token"


def runbook_block(prefix: str) -> list[str]:
    found = [c for c in block_commands(RUNBOOK) if c.startswith(prefix)]
    assert found, f"the runbook shows no command starting with {prefix!r}"
    return found


def sh(
    command: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        input=stdin,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def stage(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The local gateway standing in for the API stage, with a token, and a `token` file."""
    (tmp_path / "token").write_text(TOKEN)
    with local_gateway({"DATABASE_URL": database_url, "METRICS_AUTH_TOKEN": TOKEN}) as url:
        yield url


def test_endpoint_curls_against_the_local_gateway(stage: str, tmp_path: Path) -> None:
    commands = runbook_block(f"curl -s {STAGE_URL}") + runbook_block(
        'curl -s -H "Authorization: Bearer $(cat token)" ' + STAGE_URL
    )
    outputs = {}
    for command in commands:
        out = sh(command.replace(STAGE_URL, stage), tmp_path)
        assert out.returncode == 0, (command, out.stderr)
        outputs[command.split("/prod", 1)[1]] = out.stdout
    assert outputs["/health"] == '{"status":"ok","db":"connected"}'
    assert "checks" in json.loads(outputs["/health/detailed"])  # the token was accepted
    assert outputs["/metrics | head"].startswith("# HELP")

    # The debugging checklist's curls, with API set to the stage as it says.
    checklist = [c for c in inline_commands(RUNBOOK, "curl") if "$API/" in c]
    assert len(checklist) >= 4, checklist
    for command in checklist:
        out = sh(command, tmp_path, env={"API": stage})
        assert out.returncode == 0 and out.stdout, (command, out.stderr)
        assert '"unauthorized"' not in out.stdout and "401" not in out.stdout[:20], command


@pytest.mark.parametrize("secret", [TOKEN, f'{{"token": "{TOKEN}"}}'])
def test_token_step_writes_the_bare_token_then_promtool_accepts_the_config(
    secret: str, tmp_path: Path
) -> None:
    (command,) = runbook_block("aws secretsmanager get-secret-value")
    token_path = "/etc/prometheus/secrets/realestate-backend-metrics-token"
    assert token_path in command
    # The AWS call is what needs an account; the rest of the pipeline runs as written on
    # what `--output text` prints (the secret string and a newline).
    _, rest = command.split("|", 1)
    written = tmp_path / "token-file"
    out = sh(rest.replace(token_path, str(written)), tmp_path, stdin=secret + "\n")
    assert out.returncode == 0, out.stderr
    assert written.read_text() == TOKEN

    promtool = require_binary("promtool")
    (check,) = runbook_block("promtool check config")
    monitoring = tmp_path / "monitoring"
    shutil.copytree(RUNBOOK.parent, monitoring)
    config = yaml.safe_load((monitoring / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if job.get("authorization", {}).get("credentials_file") == token_path:
            job["authorization"]["credentials_file"] = str(written)
    (monitoring / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = sh(check.replace("promtool", promtool, 1), monitoring)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_metrics_exits_0_silently(stage: str, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    (line,) = [c for c in inline_commands(RUNBOOK, "curl") if "promtool check metrics" in c]
    command = line.replace("<MetricsUrl>", f"{stage}/metrics").replace("promtool", promtool)
    out = sh(f"set -o pipefail; {command}", tmp_path)
    # What the runbook says: exit 0 and nothing printed (the scrape recorded its own
    # HTTP and health-check histograms, so those have samples here).
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (out.stdout + out.stderr).strip()


def test_rollback_git_steps_in_a_clone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)
    good = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD~1"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    for command in (
        "git log --oneline -10",
        "git worktree add ../rollback <good-commit>",
        "cp samconfig.toml ../rollback/ && cd ../rollback",
    ):
        assert command in runbook_block(command.split()[0]), command
        out = sh(command.replace("<good-commit>", good), repo)
        assert out.returncode == 0, (command, out.stderr)
    assert (tmp_path / "rollback" / "samconfig.toml").read_text() == (
        repo / "samconfig.toml"
    ).read_text()
    assert (tmp_path / "rollback" / "Makefile").exists()  # `make build` runs there


def _aws_commands() -> list[str]:
    found = [c for c in block_commands(RUNBOOK) if c.startswith("aws ")]
    found += inline_commands(RUNBOOK, "aws")
    found += [c for c in user_doc_commands() if c.startswith("aws ")]
    return sorted(set(found))


@pytest.mark.parametrize("command", _aws_commands())
def test_aws_commands_exist_with_these_options(command: str, tmp_path: Path) -> None:
    """Checked by the AWS CLI's parser (`--generate-cli-skeleton` parses, calls nothing).
    The CLI here may be v1, which lacks v2's `--cli-binary-format`: that option is checked
    against the v2 documentation instead (a JSON `--payload` needs it)."""
    if "--payload" in command:
        assert "--cli-binary-format raw-in-base64-out" in command, command
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("no AWS CLI on this machine")
    line = command.split("|", 1)[0].split(" > ", 1)[0]
    line = line.replace("--cli-binary-format raw-in-base64-out", "")
    for placeholder in ("<stack>", "<RetentionFunction>", "<RetentionFunctionName>"):
        line = line.replace(placeholder, "example")
    line = line.replace("<MetricsTokenSecretArn>", "arn:aws:secretsmanager:eu-west-1:1:secret:x")
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_MAX_ATTEMPTS": "1",
        "HOME": tempfile.mkdtemp(),
    }
    streaming = line.startswith("aws lambda invoke")  # has no skeleton: call a closed port
    suffix = f"--endpoint-url http://127.0.0.1:{free_port()}" if streaming else ""
    out = subprocess.run(
        ["bash", "-c", f"{line} {suffix or '--generate-cli-skeleton'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if streaming:  # parsed, then failed to connect: the command and its options exist
        assert "Could not connect to the endpoint URL" in out.stderr, (command, out.stderr)
    else:
        assert out.returncode == 0, (command, out.stderr[-500:])


def test_regenerating_the_slo_rules_and_dashboard_changes_nothing(tmp_path: Path) -> None:
    """The runbook's regenerate commands, as written, in a fresh clone (its promtool test
    of slo.test.yml is tests/monitoring/test_slo.py's)."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)
    (repo / ".venv").symlink_to(Path(sys.prefix))
    commands = [c for c in block_commands(RUNBOOK) if c == "make generate"]
    assert len(commands) == 1, commands
    for command in commands:
        out = sh(command, repo)
        assert out.returncode == 0, (command, out.stdout[-1000:], out.stderr[-1000:])
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "infra"], cwd=repo, capture_output=True, text=True
    )
    assert status.stdout == "", "regenerating changed committed files:\n" + status.stdout


def test_every_runbook_command_is_exercised_somewhere() -> None:
    """A command added to the runbook is run by a test (or says why it cannot be here)."""
    here = {
        "make generate",
        "git log --oneline -10",
        "git worktree add ../rollback <good-commit>",
        "cp samconfig.toml ../rollback/ && cd ../rollback",
        "promtool check config prometheus.yml",
    }
    elsewhere = {
        "make build": "tests/docs/test_readme_commands.py (the README's make build)",
        "amtool ": "tests/monitoring/test_alert_routing.py runs amtool on alertmanager.yml",
        "promtool test rules infra/monitoring/slo.test.yml": "tests/monitoring/test_slo.py",
        "DATABASE_URL=postgresql://app@127.0.0.1:1/app make invoke": (
            "tests/monitoring/test_log_examples.py"
        ),
    }
    host_setup = ("install -d ", "printf %s ", "chmod ")  # writes /etc on the Alertmanager host
    for command in block_commands(RUNBOOK):
        if command in here or command.startswith(("curl -s ", "aws ", ".venv-sam/bin/sam ")):
            continue  # curl and aws: the tests above; sam deploy needs an account
        if any(command.startswith(prefix) for prefix in elsewhere):
            continue
        if command.startswith(host_setup) and "/etc/alertmanager/" in command:
            continue
        raise AssertionError(f"runbook command not exercised by a test: {command}")
