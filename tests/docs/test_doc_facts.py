"""The facts the user docs state about the code agree with it: setting defaults, log types,
and no fact that a later commit falsifies silently (test counts, suite times, line numbers).

The docs are the user's path (README.md), the pages it links (docs/*.md), the runbook,
ARCHITECTURE.md and the events' README. The settings table is generated and checked elsewhere
(tests/config); the example log lines are produced again in
tests/monitoring/test_log_examples.py. This checks the rest: the prose's "`SETTING` (default
N)" and its variants, the documented `type`s of log lines, and what may not be written at all.
benchmarks/README.md is a dated record of measurements, so its counts and times are history,
not claims about the code: it is not checked here, and the user docs link it rather than
quote it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from typing import Any

import pytest

from ops.config import Settings, Spec
from tools import ROOT
from tools.runtime.template import load_template

DOCS = (
    "README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
    "infra/monitoring/README.md",
    "ARCHITECTURE.md",
    "events/README.md",
)
SPECS: dict[str, Spec] = {
    f.metadata["spec"].env: f.metadata["spec"] for f in fields(Settings) if "spec" in f.metadata
}
PARAMETERS: dict[str, Any] = load_template()["Parameters"]

_VALUE = r"`?(?P<value>[\w.:/-]+?)`?(?:\s*(?P<unit>seconds?|minutes?|days?|ms|s)\b)?"
_NAME = r"`(?P<name>[A-Za-z][A-Za-z0-9_]+)`"
# The ways the docs state a default, each with the name and the value it claims.
DEFAULT_CLAIMS = [
    _NAME + r"[^`()|\n]{0,12}\(default:?\s+" + _VALUE + r"[\s,;:)]",  # `X` (default 1 s)
    _NAME + r",?\s+" + _VALUE + r"\s+by default",  # `X`, 1 s by default
    _NAME + r":?\s+" + _VALUE + r"\s+with the default",  # `X`: 10 s with the default
    r"defaults?\s*\(" + _NAME + r"\s+" + _VALUE + r"[\s,;:)]",  # defaults (`X` 0: …)
]
# A value in a unit, in the unit of the setting (its name's suffix).
TO_SECONDS = {"ms": 0.001, "s": 1, "second": 1, "seconds": 1, "minute": 60, "minutes": 60}
TO_SECONDS |= {"day": 86400, "days": 86400}
SUFFIX_SECONDS = {"_MS": 0.001, "_S": 1, "_MINUTES": 60}


def doc(path: str) -> str:
    return (ROOT / path).read_text()


def default_claims(text: str) -> list[tuple[str, str, str | None]]:
    """(name, value, unit) of each default the text states, in the forms above."""
    found = []
    for pattern in DEFAULT_CLAIMS:
        for m in re.finditer(pattern, text):
            found.append((m["name"], m["value"], m["unit"]))
    return found


def in_setting_units(env: str, value: str, unit: str | None) -> float:
    number = float(value)
    if unit is None:
        return number
    suffix = next((s for s in SUFFIX_SECONDS if env.endswith(s)), None)
    assert suffix, f"{env} has no unit, the docs give {value} {unit}"
    return number * TO_SECONDS[unit] / SUFFIX_SECONDS[suffix]


def test_the_claim_forms_catch_what_they_should() -> None:
    """The patterns find the forms the docs use (and the one that went stale once)."""
    stale = "the shipped defaults (`METRICS_FLUSH_INTERVAL_S` 0: a flush per invocation;"
    assert default_claims(stale) == [("METRICS_FLUSH_INTERVAL_S", "0", None)]
    assert default_claims("`SENTRY_TRACES_SAMPLE_RATE` > 0 (default 0: no tracing)") == [
        ("SENTRY_TRACES_SAMPLE_RATE", "0", None)
    ]
    assert default_claims("`X_TIMEOUT_MS`: 10 s with the default") == [("X_TIMEOUT_MS", "10", "s")]
    assert in_setting_units("X_TIMEOUT_MS", "10", "s") == 10_000


@pytest.mark.parametrize("path", DOCS)
def test_every_default_the_docs_state_is_the_codes(path: str) -> None:
    checked = 0
    for name, value, unit in default_claims(doc(path)):
        if name in SPECS:
            default = SPECS[name].default
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert in_setting_units(name, value, unit) == default, (path, name, value, unit)
            else:
                assert value == str(default), (path, name, value)
        elif name in PARAMETERS:  # a template parameter
            assert value == str(PARAMETERS[name].get("Default")), (path, name, value)
        else:
            continue
        checked += 1
    if path == "README.md":
        assert checked >= 3, "the README states defaults in forms this test no longer finds"


def test_a_parameter_said_to_share_a_settings_default_does() -> None:
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    shared = 0
    for env, value in variables.items():
        param = value.get("Ref") if isinstance(value, dict) else None
        if param in PARAMETERS and "(the same default)" in PARAMETERS[param].get("Description", ""):
            assert float(PARAMETERS[param]["Default"]) == SPECS[env].default, (env, param)
            shared += 1
    assert shared >= 1


def logged_types() -> set[str]:
    """The `type` of every log line the code writes: the "type" of each dict literal passed
    as a logger call's `extra` or built as one (`extra = {...}`, or returned for one)."""
    types: set[str] = set()
    sources = [*(ROOT / "layers/ops/ops").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "type"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    types.add(value.value)
    # Not log lines: Sentry's exception mechanism ({"type": "ops", "handled": False}).
    return types - {"ops"}


def test_the_runbook_documents_every_log_type_and_no_other() -> None:
    text = doc("infra/monitoring/README.md")
    header = "| `type` | fields | logged when |"
    section = text[text.index(header) + len(header) :].split("\n\n", 1)[0]
    table = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    # `access` is API Gateway's access log, written by the template, not by our code.
    assert table - {"access"} == logged_types()


def test_the_readme_names_every_log_type() -> None:
    match = re.search(r"Other `type`s: (.*?)(?:\(|;|\.\s)", doc("README.md"), re.S)
    assert match, "the README's list of log types"
    listed = set(re.findall(r"`([a-z_]+)`", match[1]))
    assert listed | {"request"} == logged_types()


@pytest.mark.parametrize("path", DOCS)
def test_no_fact_a_later_commit_falsifies_silently(path: str) -> None:
    """Test counts, suite times and code line numbers go stale with the next commit."""
    text = doc(path)
    assert not re.findall(r"\b\d[\d,]*\s+(?:tests|test cases|passed)\b", text), "a test count"
    assert not re.findall(r'"location":"\w+:\d+"', text), "a code line number in a log example"
    assert not re.findall(r"\b\w+\.py:\d+\b", text), "a code line number"


USER_DOCS = [d for d in DOCS if d == "README.md" or d.startswith("docs/")]


@pytest.mark.parametrize("path", USER_DOCS)
def test_the_user_docs_quote_no_measurement(path: str) -> None:
    """Benchmark ratios, machine loads and measurement dates belong to benchmarks/README.md
    (a dated record), which the user docs link instead of quoting."""
    prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", doc(path), flags=re.S | re.M)
    assert not re.findall(r"\b\d+(?:\.\d+)?x\b", prose), "a benchmark ratio"
    assert not re.findall(r"(?i)\bload(?: average)?(?: of)? ~?\d", prose), "a machine load"
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b|\b\d\d:\d\d UTC\b", prose), "a date"


def test_the_measurement_patterns_catch_what_they_should() -> None:
    stale = "0.38-0.47x in every run at load 1-5; Recorded 20:07 UTC"
    assert re.findall(r"\b\d+(?:\.\d+)?x\b", stale) == ["0.47x"]
    assert re.findall(r"(?i)\bload(?: average)?(?: of)? ~?\d", stale)
    assert re.findall(r"\b\d\d:\d\d UTC\b", stale)


def test_the_readme_s_retention_defaults_are_the_codes() -> None:
    from ops.retention_policies import DEFAULT_POLICIES

    header = "| table | column | max age | batchSize |"
    text = doc("README.md")
    section = text[text.index(header) + len(header) :].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\d+) days \| (\d+) \|$", section, re.M)
    documented = [(t, c, int(age), int(size)) for t, c, age, size in rows]
    code = [(p.table, p.column, p.max_age_days, p.batch_size) for p in DEFAULT_POLICIES]
    assert documented == code
    summary = ", ".join(f"{p.table} {p.max_age_days} d" for p in DEFAULT_POLICIES)
    assert f"(defaults: {summary})" in text  # the deploy parameters' table


def test_the_retention_bounds_and_schedule_the_docs_state_are_the_codes() -> None:
    from ops.retention_policies import MAX_AGE_DAYS, MAX_BATCH_SIZE

    text = " ".join(doc("docs/retention.md").split())
    assert f"`maxAgeDays` is 1..{MAX_AGE_DAYS};" in text
    assert f"`batchSize` (1..{MAX_BATCH_SIZE})" in text
    schedule = load_template()["Resources"]["RetentionFunction"]["Properties"]["Events"]
    (expression,) = [e["Properties"]["ScheduleExpression"] for e in schedule.values()]
    assert f"runs `{expression}` in the IANA zone" in text
    assert expression == "cron(0 3 * * ? *)"  # 03:00, as README.md and docs/retention.md say
    assert "daily at 03:00 in the IANA zone" in " ".join(doc("README.md").split())
