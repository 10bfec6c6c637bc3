"""What the monitoring tests share: the runbook's sections, the Grafana dashboard's
panels, the template's resources and saved Logs Insights queries, and Alertmanager's
inhibition rules."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.support.logs_insights import Query
from tools import ROOT
from tools.runtime.template import load_template

MONITORING = ROOT / "infra" / "monitoring"
RUNBOOK = MONITORING / "README.md"
RUNBOOK_LINK = "infra/monitoring/README.md#"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager.yml"
STACK = "ops-test"  # the stack name the template's ${AWS::StackName} stands for


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- the runbook ---------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def runbook_sections() -> dict[str, str]:
    """Each heading's anchor mapped to the text up to the next heading."""
    sections: dict[str, str] = {}
    anchor = None
    for line in RUNBOOK.read_text().splitlines():
        if match := re.match(r"^#{1,6}\s+(.*)$", line):
            anchor = _slug(match.group(1))
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def runbook_anchor(link: str) -> str:
    assert link.startswith(RUNBOOK_LINK), link
    anchor = link.removeprefix(RUNBOOK_LINK)
    assert anchor in runbook_sections(), f"{RUNBOOK} has no section #{anchor}"
    return anchor


# -- the Grafana dashboard and the template ------------------------------------------------
def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return board


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def template_resources(kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in load_template()["Resources"].items() if v["Type"] == kind}


def stack_sub(value: Any) -> str:
    """A `Fn::Sub` name as it reads in the stack `STACK`."""
    return str(value["Fn::Sub"]).replace("${AWS::StackName}", STACK)


def log_group_name(resources: dict[str, Any], logical_id: str) -> str:
    return stack_sub(resources[logical_id]["Properties"]["LogGroupName"])


@dataclass(frozen=True)
class SavedQuery:
    query: Query
    log_groups: frozenset[str]


def saved_queries() -> dict[str, SavedQuery]:
    """QueryDefinitions by the name after the stack folder (`slowest-routes-p95`)."""
    resources = load_template()["Resources"]
    out = {}
    for res in resources.values():
        if res["Type"] != "AWS::Logs::QueryDefinition":
            continue
        props = res["Properties"]
        groups = frozenset(log_group_name(resources, g["Ref"]) for g in props["LogGroupNames"])
        name = stack_sub(props["Name"]).split("/", 1)[1]
        out[name] = SavedQuery(Query(props["QueryString"]), groups)
    return out


# -- Alertmanager ---------------------------------------------------------------------------
def _matchers_match(matchers: list[str], labels: dict[str, str]) -> bool:
    """The subset of the matcher syntax alertmanager.yml uses: name="v" and name=~"re"."""
    for matcher in matchers:
        found = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher)
        assert found, matcher
        name, op, value = found.groups()
        actual = labels.get(name, "")
        if (op == "=" and actual != value) or (op == "=~" and not re.fullmatch(value, actual)):
            return False
    return True


def inhibited(target: dict[str, str], source: dict[str, str]) -> bool:
    """Whether alertmanager.yml's inhibit rules silence `target` while `source` fires."""
    for rule in load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        if (
            _matchers_match(rule["source_matchers"], source)
            and _matchers_match(rule["target_matchers"], target)
            and all(source.get(k) == target.get(k) for k in rule.get("equal", []))
        ):
            return True
    return False
