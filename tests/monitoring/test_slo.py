"""SLOs with error budgets: infra/monitoring/slo.py, the rules it writes, their promtool
tests, the dashboard, the runbook, Alertmanager and the CloudWatch alarm pair."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from infra.monitoring import slo
from tests.support.binaries import require_binary
from tests.support.monitoring import (
    dashboard_panels,
    inhibited,
    runbook_anchor,
    runbook_sections,
    saved_queries,
    template_resources,
)
from tools import ROOT
from tools.runtime.template import load_template

MONITORING = ROOT / "infra" / "monitoring"
SERVICE = "realestate-backend"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "slo.rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _seconds(duration: str) -> int:
    number, unit = int(duration[:-1]), duration[-1]
    return number * {"m": 60, "h": 3600, "d": 86400}[unit]


# -- the rules ------------------------------------------------------------------------


def test_committed_rules_are_generated_from_slo_py() -> None:
    committed = (MONITORING / "slo.rules.yml").read_text()
    regenerate = "make generate"
    assert committed == slo.render(), f"stale; run: {regenerate}"


def test_prometheus_loads_the_slo_rules() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert "slo.rules.yml" in config["rule_files"]


def test_slo_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    proc = subprocess.run(
        [promtool, "test", "rules", "slo.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_slo_alert_fires_and_stays_quiet_in_unit_tests() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in yaml.safe_load((MONITORING / "slo.test.yml").read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    names = {r["alert"] for r in _alerts()}
    assert names == {
        f"{s.alert_prefix}{a}" for s in slo.SLOS for a in ("BudgetFastBurn", "BudgetSlowBurn")
    }
    for name in names:
        assert any(cases.get(name, [])), f"{name}: no test where it fires"
        assert any(not c for c in cases.get(name, [])), f"{name}: no test where it stays quiet"


def test_every_window_is_recorded_for_every_slo() -> None:
    module = slo
    assert module.WINDOWS == ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
    recorded = {(r["record"], r["labels"]["slo"]) for r in _rules() if "record" in r}
    for s in module.SLOS:
        for window in (*module.WINDOWS, module.BUDGET_PERIOD):
            assert (f"slo:sli_error:ratio_rate{window}", s.name) in recorded
        assert ("slo:objective:ratio", s.name) in recorded
        assert ("slo:error_budget:ratio", s.name) in recorded


def test_alerts_share_a_group_with_the_ratios_they_read() -> None:
    """Rules of one group run in order: an alert never reads the previous evaluation's
    ratio. Only the budget period, which no alert reads, has a group (and interval) apart."""
    groups = yaml.safe_load((MONITORING / "slo.rules.yml").read_text())["groups"]
    for group in groups:
        recorded = {r["record"] for r in group["rules"] if "record" in r}
        for rule in group["rules"]:
            if "alert" in rule:
                read = set(re.findall(r"slo:sli_error:ratio_rate\w+", rule["expr"]))
                assert read <= recorded, (rule["alert"], read - recorded)
    (budget,) = [g for g in groups if not any("alert" in r for r in g["rules"])]
    assert budget["interval"] == slo.BUDGET_INTERVAL
    budget_ratio = f"slo:sli_error:ratio_rate{slo.BUDGET_PERIOD}"
    assert {r["record"] for r in budget["rules"]} == {budget_ratio}


def test_burn_tiers_are_the_workbooks() -> None:
    """burn rate x long window / budget period = share of the budget spent in that window."""
    module = slo
    period = _seconds(module.BUDGET_PERIOD)
    spent = {(14.4, "1h"): 0.02, (6, "6h"): 0.05, (3, "1d"): 0.10, (1, "3d"): 0.10}
    assert {(t.burn, t.long) for t in module.TIERS} == set(spent)
    for tier in module.TIERS:
        assert tier.burn * _seconds(tier.long) / period == pytest.approx(
            spent[tier.burn, tier.long]
        )
        assert _seconds(tier.short) * 12 == _seconds(tier.long)  # the workbook's 1/12
        assert {tier.long, tier.short} <= set(module.WINDOWS)
        assert tier.severity == ("critical" if tier.burn >= 6 else "warning")


def test_latency_threshold_is_a_catalogue_bucket() -> None:
    from ops.metrics import catalogue

    assert slo.LATENCY_THRESHOLD_S in catalogue.HTTP_REQUEST_DURATION.bounds
    (latency,) = [s for s in slo.SLOS if s.name == "latency"]
    # As the exposition spells the bound: the rules must match the rendered `le`.
    assert "0.2" in catalogue.HTTP_REQUEST_DURATION.bucket_parts
    assert 'le="0.2"' in latency.bad


# -- one definition of a probe ---------------------------------------------------------


def test_probe_routes_are_the_templates_health_and_metrics_routes() -> None:
    from ops.metrics.catalogue import PROBE_ROUTES

    resources = load_template()["Resources"]
    paths = {
        event["Properties"]["Path"]
        for name in ("HealthFunction", "MetricsFunction")
        for event in resources[name]["Properties"]["Events"].values()
        if event["Type"] == "Api"
    }
    assert set(PROBE_ROUTES) == paths


def test_probe_matcher_excludes_exactly_the_probe_routes() -> None:
    from ops.metrics.catalogue import PROBE_ROUTES

    (pattern,) = re.findall(r'route!~"([^"]+)"', slo.NOT_A_PROBE)
    for route in PROBE_ROUTES:
        assert re.fullmatch(pattern, route), route
    for route in ("/listings/{id}", "/healthz", "/health/ready/x", "/metrics2", "unmatched"):
        assert not re.fullmatch(pattern, route), route


def test_every_probe_exclusion_in_rules_and_dashboard_is_the_same_matcher() -> None:
    """Rules or panels that leave probes out spell it exactly as slo.NOT_A_PROBE."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    exprs = [
        r["expr"]
        for f in config["rule_files"]
        for g in yaml.safe_load((MONITORING / f).read_text())["groups"]
        for r in g["rules"]
    ]
    exprs += [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    found = [m for e in exprs for m in re.findall(r'route!~"[^"]*"', e)]
    assert found
    assert set(found) == {slo.NOT_A_PROBE}


# -- alerts: annotations, runbook, routing ---------------------------------------------------


def test_slo_alerts_are_annotated_and_point_to_their_runbook_section() -> None:
    queries = set(saved_queries())
    for rule in _alerts():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["labels"]["slo"] in {s.name for s in slo.SLOS}
        section = runbook_sections()[runbook_anchor(annotations["runbook"])]
        assert name in section, name
        assert len(re.findall(r"^\d+\. ", section, re.M)) >= 3, f"{name}: first three checks"
        assert {q for q in queries if f"/{q}" in section}, f"{name}: no saved query named"
    assert "slos-and-error-budgets" in runbook_sections()


def test_a_page_silences_the_ticket_of_its_own_slo_only() -> None:
    labels = {
        r["alert"]: {**r["labels"], "alertname": r["alert"], "service": SERVICE} for r in _alerts()
    }
    fast, slow = labels["AvailabilityBudgetFastBurn"], labels["AvailabilityBudgetSlowBurn"]
    assert inhibited(slow, fast)
    assert not inhibited(fast, slow)
    assert not inhibited(labels["LatencyBudgetSlowBurn"], fast)


# -- dashboard ------------------------------------------------------------------------------


def test_dashboard_shows_remaining_budget_and_burn_rate_per_slo() -> None:
    by_title = {p["title"]: p for p in dashboard_panels()}
    budget = by_title["Error budget remaining (30d)"]
    (target,) = budget["targets"]
    assert "slo:sli_error:ratio_rate30d" in target["expr"] and target["legendFormat"] == "{{slo}}"
    burn = by_title["Burn rate by SLO"]
    assert all("slo:error_budget:ratio" in t["expr"] for t in burn["targets"])
    assert {"{{slo}} 1h", "{{slo}} 6h"} <= {t["legendFormat"] for t in burn["targets"]}


# -- CloudWatch -----------------------------------------------------------------------------


def _composite(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The composite alarm of that name and its window alarms, in AlarmRule order."""
    (composite,) = [
        c["Properties"]
        for c in template_resources("AWS::CloudWatch::CompositeAlarm").values()
        if c["Properties"]["AlarmName"]["Fn::Sub"] == f"${{AWS::StackName}}-{name}"
    ]
    rule = composite["AlarmRule"]["Fn::Sub"]
    ids = re.findall(r'ALARM\("\$\{(\w+)\}"\)', rule)
    assert rule == " AND ".join(f'ALARM("${{{i}}}")' for i in ids), rule
    alarms = template_resources("AWS::CloudWatch::Alarm")
    return composite, [alarms[i]["Properties"] for i in ids]


@pytest.mark.parametrize(
    ("name", "burn", "long", "short"),
    [
        ("AvailabilityBudgetFastBurn", 14.4, "1h", "5m"),
        ("AvailabilityBudgetSlowBurn", 1, "3d", "6h"),
    ],
)
def test_cloudwatch_burn_alarm_pair_matches_slo_py(
    name: str, burn: float, long: str, short: str
) -> None:
    module = slo
    (tier,) = [t for t in module.TIERS if (t.burn, t.long, t.short) == (burn, long, short)]
    (availability,) = [s for s in module.SLOS if s.name == "availability"]
    composite, windows = _composite(name)
    assert composite["AlarmActions"] == composite["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert availability.percent in composite["AlarmDescription"]
    for window, props in zip((tier.long, tier.short), windows, strict=True):
        (expression,) = [m for m in props["Metrics"] if m.get("ReturnData")]
        assert expression["Expression"].endswith(f" / {availability.budget:g}"), expression
        stats = [m["MetricStat"] for m in props["Metrics"] if "MetricStat" in m]
        assert {s["Period"] for s in stats} == {_seconds(window)}
        assert {s["Metric"]["MetricName"] for s in stats} == {"http_requests"}
        by_id = {
            m["Id"]: d["Value"]
            for m in props["Metrics"]
            if "MetricStat" in m
            for d in m["MetricStat"]["Metric"]["Dimensions"]
            if d["Name"] == "status_class"
        }
        assert by_id == {"r2xx": "2xx", "r3xx": "3xx", "r4xx": "4xx", "r5xx": "5xx"}
        assert expression["Expression"].startswith("FILL(r5xx, 0) / ("), expression
        assert props["Threshold"] == tier.burn
        assert props["ComparisonOperator"] == "GreaterThanThreshold"
        assert props["EvaluationPeriods"] == 1
        assert props["TreatMissingData"] == "notBreaching"
