"""The example log lines in README.md and the runbook are lines the code really prints.

Each example is produced again by the command the docs name, and compared key by key
(same keys, same order, same values), except for what differs on every run.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.runtime import run_tool
from tools import ROOT

RFC3339_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# Differ on every run: when, how long, Lambda's request id.
VOLATILE = {"time", "duration", "latencyMs", "function_request_id"}
UNREACHABLE = "postgresql://app@127.0.0.1:{port}/app"


def doc_examples(path: str, must_contain: str) -> list[dict[str, Any]]:
    """The one-line JSON examples of the first ```json block that holds `must_contain`."""
    text = (ROOT / path).read_text()
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        if must_contain in block:
            return [json.loads(line) for line in block.splitlines() if line.strip()]
    raise AssertionError(f"no ```json example with {must_contain} in {path}")


def invoke_health(database_url: str) -> list[dict[str, Any]]:
    """`make invoke FN=HealthFunction EVENT=events/health.json`: its JSON log lines."""
    out = run_tool(
        "tools.runtime.invoke",
        "HealthFunction",
        "--event",
        "events/health.json",
        env={"DATABASE_URL": database_url},
        unset=("POWERTOOLS_", "LOG_", "DATABASE_URL", "DB_SECRET_ARN"),  # the defaults' lines
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]


def assert_same_line(printed: dict[str, Any], documented: dict[str, Any]) -> None:
    assert list(printed) == list(documented), "keys or their order differ from the docs"
    for key, value in documented.items():
        if key == "location":  # the function, not its line: that moves with every edit
            function, line = value.split(":")
            assert (function, line) == (printed[key].split(":")[0], "…"), value
        elif key in VOLATILE:
            assert type(printed[key]) is type(value), key
        else:
            assert printed[key] == value, key
    assert RFC3339_UTC_MS.match(printed["time"]) and RFC3339_UTC_MS.match(documented["time"])


def test_readme_request_line_is_what_invoke_prints(database_url: str) -> None:
    (documented,) = doc_examples("README.md", '"type":"request"')
    printed = [line for line in invoke_health(database_url) if line.get("type") == "request"]
    assert len(printed) == 1
    assert_same_line(printed[0], documented)
    # The seed's request-log fields, all present.
    seed = ("level", "time", "service", "type", "method", "url", "statusCode", "duration")
    assert set(seed) | {"requestId"} <= set(printed[0])


def test_runbook_database_down_lines_are_what_invoke_prints(closed_port: int) -> None:
    documented = doc_examples("infra/monitoring/README.md", '"type":"health_check"')
    assert [d["type"] for d in documented] == ["health_check", "request", "metrics_flush"]
    command = f"DATABASE_URL={UNREACHABLE.format(port=1)} make invoke"
    runbook = (ROOT / "infra/monitoring/README.md").read_text()
    assert command in runbook, "the runbook names the command that prints its example"
    printed = invoke_health(UNREACHABLE.format(port=closed_port))
    for line in printed:  # the docs' port is 1; this run's closed port is another
        if "error" in line:
            line["error"] = line["error"].replace(f":{closed_port}/", ":1/")
    assert len(printed) == len(documented)
    for got, want in zip(printed, documented, strict=True):
        assert_same_line(got, want)
    assert "connection refused" in printed[0]["error"]


@pytest.mark.parametrize("path", ["README.md", "infra/monitoring/README.md"])
def test_no_powertools_default_timestamp_left_in_the_docs(path: str) -> None:
    assert not re.search(r'"timestamp":"\d{4}-\d\d-\d\d \d', (ROOT / path).read_text())
