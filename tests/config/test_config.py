"""ops.config: the one module that reads and checks the environment, and the README table."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.config import (
    SCRAPE_INTERVAL_S,
    ConfigError,
    Kind,
    Settings,
    Spec,
    load,
    settings,
    specs,
)
from tools import PYTHONPATH, ROOT
from tools.docs.settings_doc import README, rendered
from tools.runtime.serve import worker_env
from tools.standins.prom import duration_s, scrape_interval_s


def knob(kind: Kind = "whole", low: float | None = None, high: float | None = None) -> Spec:
    if kind == "whole" and low is None:
        low = 1
    return Spec("KNOB", kind, 7, "a knob", low=low, high=high)


def test_unset_or_blank_gives_the_defaults() -> None:
    assert load({}) == Settings()
    blank = {spec.env: "  " for spec in specs() if not spec.blank_is_set}
    assert load(blank) == Settings()
    cfg = load({})
    assert (cfg.metrics_flush_interval_s, cfg.metrics_shards, cfg.health_db_budget_s) == (
        1.0,
        16,
        2.0,
    )
    assert cfg.service == "realestate-backend" and cfg.log_level == "INFO"


def test_values_within_bounds_are_used() -> None:
    cfg = load(
        {
            "METRICS_SHARDS": " 42 ",
            "METRICS_FLUSH_INTERVAL_S": "0.5",
            "DB_SSL_MODE": "Verify-Full",
            "MOLTBOT_GATEWAY_URL": "http://gw.internal:8080/",
            "POWERTOOLS_LOG_LEVEL": "warning",
        }
    )
    assert cfg.metrics_shards == 42 and cfg.metrics_flush_interval_s == 0.5
    assert cfg.db_ssl_mode == "verify-full"
    assert cfg.moltbot_gateway_url == "http://gw.internal:8080"
    assert cfg.log_level == "WARNING"


@pytest.mark.parametrize(
    ("raw", "kwargs", "message"),
    [
        ("fifteen", {}, "KNOB must be a positive whole number, got 'fifteen'"),
        ("-1", {}, "KNOB must be a positive whole number, got '-1'"),
        ("1.5", {}, "KNOB must be a positive whole number"),
        ("9", {"low": 10, "high": 60}, "KNOB must be a whole number from 10 to 60, got '9'"),
        ("61", {"low": 10, "high": 60}, "KNOB must be a whole number from 10 to 60, got '61'"),
        ("-1", {"low": 0}, "KNOB must be a whole number from 0 up"),
        ("2000", {"low": 1, "high": 1024}, "KNOB must be a positive whole number up to 1024"),
        ("abc", {"kind": "number", "low": 0, "high": 60}, "KNOB must be a number from 0 to 60"),
        ("inf", {"kind": "number", "low": 0, "high": 60}, "from 0 to 60, got 'inf'"),
        ("nan", {"kind": "number", "low": 0, "high": 60}, "from 0 to 60, got 'nan'"),
        ("-inf", {"kind": "number", "low": 0, "high": 60}, "got '-inf'"),
        ("1e400", {"kind": "number", "low": 0, "high": 60}, "got '1e400'"),
        ("61", {"kind": "number", "low": 0, "high": 60}, "got '61'"),
        ("maybe", {"kind": "flag"}, "KNOB must be true or false (or 1/0, yes/no, on/off"),
        ("ftp://x", {"kind": "url"}, "KNOB must be an http:// or https:// URL, got 'ftp://x'"),
        ("x" * 500, {}, "got '" + "x" * 80 + "…'"),
        ("\udcff1", {}, "got '\\udcff1'"),
    ],
)
def test_anything_else_is_one_clear_error(raw: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        knob(**kwargs).parse(raw)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_bad_variable_is_named_in_one_message() -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            {
                "METRICS_FLUSH_INTERVAL_S": "abc",
                "HEALTH_DB_TIMEOUT_S": "inf",
                "POWERTOOLS_LOG_LEVEL": "x",
            }
        )
    text = str(caught.value)
    assert "METRICS_FLUSH_INTERVAL_S must be a number from 0 to 3600, got 'abc'" in text
    assert "HEALTH_DB_TIMEOUT_S must be a number from 0.01 to 28, got 'inf'" in text
    assert "POWERTOOLS_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'x'" in (
        text
    )
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_settings_that_do_not_fit_together_are_refused() -> None:
    # A margin shorter than the statement timeout is fine: each run fits its statement
    # timeout into its margin (the retention function's run.run_limits).
    assert load({"RETENTION_DEADLINE_MARGIN_MS": "5000"}).retention_deadline_margin_ms == 5000
    with pytest.raises(ConfigError, match="RETENTION_BATCH_TARGET_MS must be below"):
        load({"RETENTION_BATCH_TARGET_MS": "20000"})
    with pytest.raises(ConfigError, match="RETENTION_LEASE_TTL_MS must exceed"):
        load({"RETENTION_LEASE_TTL_MS": "10000"})
    with pytest.raises(ConfigError, match="METRICS_SCRAPE_BUDGET_S must exceed HEALTH_DB_TIM"):
        load({"METRICS_SCRAPE_BUDGET_S": "3", "HEALTH_DB_TIMEOUT_S": "3"})


def test_a_secret_is_never_quoted() -> None:
    spec = Spec("TOKEN", "secret", None, "")
    assert "hunter2" not in spec._shown("hunter2")
    assert load({"METRICS_AUTH_TOKEN": "   "}).metrics_token == ""  # configured, but blank
    assert load({"METRICS_AUTH_TOKEN": " s3cret "}).metrics_token == "s3cret"


def test_settings_are_read_once_per_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_SHARDS", "3")
    first = settings()
    assert first.metrics_shards == 3 and settings() is first


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("METRICS_FLUSH_INTERVAL_S", "abc"),
        ("METRICS_FLUSH_INTERVAL_S", "inf"),
        ("HEALTH_DB_TIMEOUT_S", "nan"),
        ("METRICS_SHARDS", "0"),
    ],
)
def test_a_bad_value_fails_the_container_at_start(variable: str, value: str) -> None:
    """Importing the handler (Lambda's init phase) fails with one line naming the variable."""
    code = (
        "from tools.runtime.handler import load_handler\n"
        "load_handler('health.app.lambda_handler')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHONPATH, variable: value}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ops.config.ConfigError: " + variable + " must be ")
    assert repr(value) in last
    assert "float(" not in proc.stderr and "int(" not in proc.stderr


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in ("environ", "getenv", "environb") for a in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_no_other_module_reads_the_environment() -> None:
    config = ROOT / "layers" / "ops" / "ops" / "config.py"
    offenders = []
    sources = [*(ROOT / "layers").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
    assert len(sources) > 20
    for path in sources:
        if path == config or "/build/" in str(path) or "/.aws-sam/" in str(path):
            continue
        for line in _reads_environment(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == []
    assert _reads_environment(ast.parse(config.read_text()))  # the check can fail


def test_readme_has_one_settings_table_matching_ops_config() -> None:
    text = README.read_text()
    assert text == rendered(text), "run make generate"
    documented = {spec.env for spec in specs()}
    assert len(documented) == len(specs())  # one variable, one setting
    # No second table of variables elsewhere in the README.
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    table_rows = [r for r in rows if r.split("`")[1] in documented]
    assert len(table_rows) == len(documented)


def test_template_sets_only_declared_variables() -> None:
    from tools.runtime.template import load_template

    template = load_template()
    declared = {spec.env for spec in specs()}
    variables: dict[str, object] = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    for res in template["Resources"].values():
        if res.get("Type") == "AWS::Serverless::Function":
            variables.update(res["Properties"].get("Environment", {}).get("Variables", {}))
    assert set(variables) - declared == set(), json.dumps(sorted(set(variables) - declared))


def test_settings_doc_check_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.docs.settings_doc", "--check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHONPATH},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_new_series_hold_is_derived_from_the_recommended_scrape_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/metrics.md: the hold's default is twice prometheus.yml's scrape interval (one failed
    scrape still leaves one that sees a new series at 0); `make run` holds for `make prom`'s
    interval unless the shell sets a hold."""
    monitoring = ROOT / "infra" / "monitoring"
    assert scrape_interval_s(monitoring / "prometheus.yml") == SCRAPE_INTERVAL_S
    conf = yaml.safe_load((monitoring / "prometheus.yml").read_text())
    for job in conf["scrape_configs"]:
        assert duration_s(job.get("scrape_interval", "0s")) <= SCRAPE_INTERVAL_S
    assert Settings().metrics_new_series_hold_s == 2 * SCRAPE_INTERVAL_S
    local = scrape_interval_s()
    assert 0 < local <= SCRAPE_INTERVAL_S
    monkeypatch.delenv("METRICS_NEW_SERIES_HOLD_S")
    assert worker_env("postgresql://x")["METRICS_NEW_SERIES_HOLD_S"] == f"{local:g}"
    monkeypatch.setenv("METRICS_NEW_SERIES_HOLD_S", "5")
    assert "METRICS_NEW_SERIES_HOLD_S" not in worker_env("postgresql://x")  # the shell's wins
