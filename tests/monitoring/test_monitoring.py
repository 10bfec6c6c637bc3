"""The operator kit: Prometheus rules and their promtool tests, the scrape config, the
Grafana dashboard, the CloudWatch alarms, and the runbook they all point to."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.monitoring import grafana_dashboard
from tests.support.binaries import require_binary
from tests.support.monitoring import (
    RUNBOOK,
    RUNBOOK_LINK,
    dashboard,
    dashboard_panels,
    runbook_anchor,
    runbook_sections,
    saved_queries,
    template_resources,
)
from tools import ROOT
from tools.runtime.template import load_template

MONITORING = ROOT / "infra" / "monitoring"
JOB = "realestate-backend"

# Prometheus alerts with no CloudWatch twin, and why.
PROMETHEUS_ONLY = {
    "MetricsScrapeDown": "the scraper runs outside AWS; CloudWatch cannot see it",
    "RetentionNeverSucceeded": "RetentionNotSucceeded's alarm treats missing data as breaching",
    "DependencyDown": "optional dependencies differ per deployment",
    "SlowDatabaseQueries": "per-statement times (pg_stat_statements) are no RDS metric",
    "LongRunningTransaction": "transaction ages (pg_stat_activity) are no RDS metric",
    "LiveMetricFailing": "the live gauges and their error counter exist in Prometheus only",
}


def _yaml(name: str) -> Any:
    return yaml.safe_load((MONITORING / name).read_text())


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _yaml("alerts.yml")["groups"] for r in g["rules"] if "alert" in r]


def _rule_files() -> list[str]:
    """Every rule file Prometheus loads (prometheus.yml): alerts, recording rules, SLOs."""
    return list(_yaml("prometheus.yml")["rule_files"])


def _recording_rules() -> list[dict[str, Any]]:
    return [
        r for f in _rule_files() for g in _yaml(f)["groups"] for r in g["rules"] if "record" in r
    ]


def _recorded_names() -> set[str]:
    return {r["record"] for r in _recording_rules()}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def _run(*args: str, cwd: Path = MONITORING) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- runbook -----------------------------------------------------------------------


# --- Prometheus rules --------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: str) -> None:
    assert {"alerts.yml", "recording-rules.yml", "slo.rules.yml"} <= set(_rule_files())
    _run(promtool, "check", "rules", *_rule_files())


def test_alert_unit_tests_pass(promtool: str) -> None:
    _run(promtool, "test", "rules", "alerts.test.yml")


def test_every_alert_fires_and_stays_quiet_in_unit_tests() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in _yaml("alerts.test.yml")["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    for rule in _alert_rules():
        name = rule["alert"]
        assert any(cases.get(name, [])), f"{name}: no test where it fires"
        assert any(not c for c in cases.get(name, [])), f"{name}: no test where it stays quiet"


def test_every_alert_is_annotated_and_points_to_its_runbook_section() -> None:
    queries = set(saved_queries())
    for rule in _alert_rules():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert annotations["summary"] and annotations["description"], name
        section = runbook_sections()[runbook_anchor(annotations["runbook"])]
        assert name in section or name.lower() in runbook_sections(), name
        assert len(re.findall(r"^\d+\. ", section, re.M)) >= 3, f"{name}: first three checks"
        named = {q for q in queries if f"/{q}" in section}
        assert named, f"{name}: its runbook section names no saved Logs Insights query"


# --- scrape config -----------------------------------------------------------------


def test_scrape_config_is_valid_and_matches_the_stack(promtool: str, tmp_path: Path) -> None:
    config = _yaml("prometheus.yml")
    (job,) = config["scrape_configs"]
    stage = load_template()["Parameters"]["StageName"]["Default"]
    assert job["job_name"] == JOB
    assert job["scheme"] == "https"
    assert job["metrics_path"] == f"/{stage}/metrics"
    assert job["authorization"]["type"] == "Bearer"
    (target,) = job["static_configs"][0]["targets"]
    assert re.fullmatch(r"[a-z0-9]+\.execute-api\.[a-z0-9-]+\.amazonaws\.com:443", target)

    # promtool insists the token file exists; point it at one, rule files at the real ones.
    token = tmp_path / "token"
    token.write_text("s3cret")
    job["authorization"]["credentials_file"] = str(token)
    config["rule_files"] = [str(MONITORING / f) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))


def test_scrape_down_alert_watches_the_configured_job() -> None:
    (rule,) = [r for r in _alert_rules() if r["alert"] == "MetricsScrapeDown"]
    assert f'up{{job="{JOB}"}}' in rule["expr"]


# --- Grafana -----------------------------------------------------------------------


def _panel_exprs() -> dict[str, str]:
    """Every target's PromQL with the dashboard variable set to "All"."""
    return {
        f"dashboard:panel_{p['id']}_{t['refId']}": t["expr"].replace("$route", ".*")
        for p in dashboard_panels()
        for t in p["targets"]
    }


def test_dashboard_json_is_generated_from_its_source() -> None:
    committed = (MONITORING / "grafana-dashboard.json").read_text()
    assert committed == grafana_dashboard.render(), "stale; run: make generate"


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    board = dashboard()
    (ds_input,) = board["__inputs"]
    assert (ds_input["name"], ds_input["type"], ds_input["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
    (route,) = board["templating"]["list"]
    assert route["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_has_the_panels_operators_asked_for() -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for wanted in (
        "request rate by route",
        "error rate",
        "p50 / p95 / p99",
        "tool call latency",
        "webhook failures",
        "pairing failures",
        "active sessions",
        "database connections",
        "rows deleted",
        "retention lag",
    ):
        assert wanted in titles, wanted


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": n, "expr": e} for n, e in _panel_exprs().items()],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    _run(promtool, "check", "rules", str(tmp_path / "dashboard-rules.yml"))


# --- metric names ------------------------------------------------------------------

_NOT_METRICS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (functions, labels and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in _NOT_METRICS}


def _base_name(series: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", series)


def _series_used() -> dict[str, set[str]]:
    """Where each selected series name is used: alerts, recording rules, dashboard."""
    sources: dict[str, list[str]] = {
        "alerts.yml": [r["expr"] for r in _alert_rules()],
        "recording rules": [r["expr"] for r in _recording_rules()],
        "grafana-dashboard.json": list(_panel_exprs().values()),
    }
    used: dict[str, set[str]] = {}
    for source, exprs in sources.items():
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(source)
    return used


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (route, le) (rate(x_bucket{le=~"5(\\\\.0)?"}[5m])))'
        " > 500 and on (route) sum by (route) (rate(y_count[5m])) > 1 / 60"
        ' or absent(up{job="j"}) unless z offset 5m'
    )
    assert metric_names(expr) == {"x_bucket", "y_count", "up", "z"}


def test_recorded_series_used_are_defined() -> None:
    recorded = _recorded_names()
    for name, sources in _series_used().items():
        if ":" in name:
            assert name in recorded, f"{name} used in {sorted(sources)} is not recorded"


# --- CloudWatch ----------------------------------------------------------------------


def _alarm_name(props: dict[str, Any]) -> str:
    name: str = props["AlarmName"]["Fn::Sub"]
    return name.removeprefix("${AWS::StackName}-")


def _composite_parts() -> set[str]:
    """Alarms that are one window of a composite alarm (the SLO burn rates)."""
    parts = set()
    for composite in template_resources("AWS::CloudWatch::CompositeAlarm").values():
        parts |= set(
            re.findall(r'ALARM\("\$\{(\w+)\}"\)', composite["Properties"]["AlarmRule"]["Fn::Sub"])
        )
    return parts


def _notifying_alarms() -> dict[str, dict[str, Any]]:
    alarms = {
        **template_resources("AWS::CloudWatch::Alarm"),
        **template_resources("AWS::CloudWatch::CompositeAlarm"),
    }
    return {k: v for k, v in alarms.items() if k not in _composite_parts()}


def test_every_alarm_notifies_the_topic_and_links_its_runbook_section() -> None:
    alarms = {
        **template_resources("AWS::CloudWatch::Alarm"),
        **template_resources("AWS::CloudWatch::CompositeAlarm"),
    }
    assert alarms
    parts = _composite_parts()
    assert parts <= set(alarms)
    for logical_id, alarm in alarms.items():
        props = alarm["Properties"]
        if logical_id in parts:  # its composite notifies; it must not notify twice
            assert "AlarmActions" not in props and "OKActions" not in props, logical_id
        else:
            actions = [{"Ref": "AlarmTopic"}]
            assert props["AlarmActions"] == props["OKActions"] == actions, logical_id
        if alarm["Type"] == "AWS::CloudWatch::Alarm":
            assert props["TreatMissingData"] in {"breaching", "notBreaching"}, logical_id
        link = re.search(r"Runbook: (\S+)", props["AlarmDescription"])
        assert link, logical_id
        runbook_anchor(link.group(1))
        anchor = link.group(1).removeprefix(RUNBOOK_LINK)
        assert (
            _alarm_name(props) in runbook_sections()[anchor] or anchor == _alarm_name(props).lower()
        ), logical_id


def test_every_prometheus_alert_has_a_cloudwatch_twin() -> None:
    alarms = {
        _alarm_name(a["Properties"]) for a in template_resources("AWS::CloudWatch::Alarm").values()
    }
    for rule in _alert_rules():
        name = rule["alert"]
        assert name in alarms or name in PROMETHEUS_ONLY, f"{name}: no CloudWatch alarm"
        assert not (name in alarms and name in PROMETHEUS_ONLY), name


def test_alarm_topic_is_encrypted_and_takes_an_optional_email() -> None:
    template = load_template()
    topic = template["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key_policy = template["Resources"]["AlarmTopicKey"]["Properties"]["KeyPolicy"]
    principals = [s["Principal"] for s in key_policy["Statement"]]
    assert {"Service": "cloudwatch.amazonaws.com"} in principals
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}


def _dashboard_body() -> dict[str, Any]:
    (board,) = template_resources("AWS::CloudWatch::Dashboard").values()
    body = board["Properties"]["DashboardBody"]["Fn::Sub"]
    parsed: dict[str, Any] = json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: m.group(1), body))
    return parsed


def test_cloudwatch_dashboard_is_valid_json_and_shows_every_alarm() -> None:
    widgets = _dashboard_body()["widgets"]
    (alarm_widget,) = [w for w in widgets if w["type"] == "alarm"]
    shown = {a.removesuffix(".Arn") for a in alarm_widget["properties"]["alarms"]}
    # An alarm created only under a Condition cannot be named in the body unconditionally.
    alarms = _notifying_alarms()
    assert shown == {k for k, v in alarms.items() if "Condition" not in v}
    for widget in widgets:
        pos = widget["x"] + widget["width"]
        assert pos <= 24, widget


def test_query_definitions_read_the_templates_log_groups() -> None:
    groups = set(template_resources("AWS::Logs::LogGroup"))
    for logical_id, res in template_resources("AWS::Logs::QueryDefinition").items():
        props = res["Properties"]
        assert props["Name"]["Fn::Sub"].startswith("${AWS::StackName}/"), logical_id
        refs = {g["Ref"] for g in props["LogGroupNames"]}
        assert refs <= groups, logical_id


def test_runbook_shows_each_saved_query_as_deployed() -> None:
    """The runbook's copy of each query is the template's, character for character."""
    text = RUNBOOK.read_text()
    for name, saved in saved_queries().items():
        assert f"/{name}" in text, name
        assert saved.query.text.strip() in text, f"{name}: runbook copy differs from template"


# --- against the metrics catalogue (layers/ops/ops/metrics/catalogue.py) --------------

SCRAPE_LABELS = {"job", "instance"}


def _registry() -> dict[str, Any]:
    from ops.metrics import catalogue  # noqa: F401 - defining the families fills the registry
    from ops.metrics.families import REGISTRY

    return REGISTRY


def _family(series: str) -> Any:
    registry = _registry()
    family = registry.get(series) or registry.get(_base_name(series))
    assert family is not None, f"{series} is not in the metrics catalogue"
    return family


def _all_exprs() -> list[str]:
    return [
        *(r["expr"] for r in _alert_rules()),
        *(r["expr"] for r in _recording_rules()),
        *_panel_exprs().values(),
    ]


def test_every_series_used_exists_in_the_catalogue() -> None:
    for name, sources in _series_used().items():
        if ":" not in name and name != "up":
            family = _family(name)
            if name != family.name:  # a histogram's _bucket/_count/_sum
                assert family.kind == "histogram", f"{name} ({sorted(sources)})"


def test_every_label_used_exists_on_its_metric() -> None:
    for expr in _all_exprs():
        selected = [n for n in metric_names(expr) if ":" not in n and n != "up"]
        known = set(SCRAPE_LABELS)
        for name in selected:
            family = _family(name)
            own = set(family.labelnames) | SCRAPE_LABELS
            if name.endswith("_bucket"):
                own.add("le")
            known |= own
            for selector in re.findall(rf"\b{name}\{{([^}}]*)\}}", expr):
                for label in re.findall(r"(\w+)\s*[=!]~?", selector):
                    assert label in own, f"{name} has no label {label}: {expr}"
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in known or not selected, f"{label}: {expr}"


def test_alert_bucket_thresholds_are_catalogue_buckets() -> None:
    """HighToolLatency counts calls above a bucket bound: that bound must exist as rendered."""
    for rule in _alert_rules():
        for name, pattern in re.findall(r'(\w+_bucket)\{le=~"([^"]+)"\}', rule["expr"]):
            regex = pattern.encode().decode("unicode_escape")
            family = _family(name)
            assert any(re.fullmatch(regex, part) for part in family.bucket_parts), rule["alert"]


def test_runbook_catalogue_matches_the_metrics_catalogue() -> None:
    rows = re.findall(
        r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|([^|]*)\|",
        runbook_sections()["metric-catalogue"],
        re.M,
    )
    documented = {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}
    documented.pop("up")
    assert documented == {f.name: (f.kind, set(f.labelnames)) for f in _registry().values()}


def _emf_metrics() -> dict[str, str | None]:
    """EMF metric name -> its extra dimension (besides `service`), from the catalogue."""
    out: dict[str, str | None] = {}
    for family in _registry().values():
        if family.emf is None:
            continue
        dimension = family.emf.dimension[0] if family.emf.dimension else None
        names = list(family.emf.names)
        for label, values in family.allowed.items():
            if "{" + label + "}" in family.emf.name:
                names = [family.emf.name.format(**{label: v}) for v in sorted(values)]
        out.update(dict.fromkeys(names, dimension))
    return out


def _alarm_metrics() -> list[tuple[str, dict[str, Any]]]:
    """(alarm, metric) for every metric an alarm reads from the EMF namespace."""
    found = []
    for logical_id, alarm in template_resources("AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        metrics = [props] + [
            m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m
        ]
        found += [
            (logical_id, m) for m in metrics if m.get("Namespace") == {"Ref": "MetricsNamespace"}
        ]
    return found


def test_cloudwatch_alarms_read_catalogued_emf_metrics() -> None:
    emf = _emf_metrics()
    assert _alarm_metrics()
    for logical_id, metric in _alarm_metrics():
        name = metric["MetricName"]
        assert name in emf, f"{logical_id}: {name} is not emitted as EMF"
        dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
        assert dimensions.pop("service") == {"Ref": "ServiceName"}, logical_id
        assert set(dimensions) == ({emf[name]} if emf[name] else set()), logical_id


def test_cloudwatch_dashboard_reads_catalogued_emf_metrics() -> None:
    emf = _emf_metrics()
    used = set()
    for widget in _dashboard_body()["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if line and line[0] == "MetricsNamespace":
                used.add(line[1])
            used.update(re.findall(r'MetricName=\\?"(\w+)\\?"', json.dumps(line)))
    assert used and used <= set(emf) | set(_metric_filter_metrics()), used - set(emf)


def _metric_filter_metrics() -> dict[str, dict[str, Any]]:
    """Metrics the template's metric filters derive from log lines (not EMF), by name."""
    return {
        t["MetricName"]: t
        for res in template_resources("AWS::Logs::MetricFilter").values()
        for t in res["Properties"]["MetricTransformations"]
    }


def test_the_throttling_metric_counts_the_access_logs_429s() -> None:
    """API Gateway answers 429 itself (no Lambda, no EMF): a filter on the access log counts
    them, in the bundle's namespace, and the dashboard shows it."""
    (throttled,) = [
        res["Properties"]
        for res in template_resources("AWS::Logs::MetricFilter").values()
        if res["Properties"]["MetricTransformations"][0]["MetricName"] == "api_throttled_requests"
    ]
    assert throttled["LogGroupName"] == {"Ref": "ApiAccessLogGroup"}
    assert throttled["FilterPattern"] == '{ $.type = "access" && $.status = 429 }'
    (transform,) = throttled["MetricTransformations"]
    assert transform["MetricNamespace"] == {"Ref": "MetricsNamespace"}
    assert (transform["MetricValue"], transform["Unit"]) == ("1", "Count")
    fmt = load_template()["Resources"]["Api"]["Properties"]["AccessLogSetting"]["Format"]
    assert '"type":"access"' in fmt and '"status":$context.status,' in fmt  # a JSON number


def test_cloudwatch_alarm_dimensions_match_the_emf_the_code_emits() -> None:
    """Record every EMF-mirrored family, flush, and find each alarm's exact metric in the output."""
    from ops.metrics import flush  # imports the logger outside the redirect below

    chosen = {"status": ("200", "302", "404", "503"), "check": ("database", "metrics_store")}
    for family in _registry().values():
        if family.emf is None:
            continue
        choices = [
            sorted(family.allowed.get(label) or chosen.get(label) or ("x",))
            for label in family.labelnames
        ]
        for values in itertools.product(*choices):
            child = family.labels(*values)
            if family.kind == "counter":
                child.inc()
            elif family.kind == "gauge":
                child.set(0.0)  # a health check down: health_check_failures 1
            else:
                child.observe(1.0)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # EMF goes to stdout, which Lambda ships to CloudWatch
        flush()

    emitted = set()
    for line in stdout.getvalue().splitlines():
        if '"_aws"' not in line:
            continue
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                key = frozenset((d, doc[d]) for d in dims)
                emitted |= {(directive["Namespace"], m["Name"], key) for m in directive["Metrics"]}
    parameters = {k: v.get("Default") for k, v in load_template()["Parameters"].items()}
    for logical_id, metric in _alarm_metrics():
        dims = frozenset(
            (
                d["Name"],
                parameters[d["Value"]["Ref"]] if isinstance(d["Value"], dict) else d["Value"],
            )
            for d in metric["Dimensions"]
        )
        assert ("Test", metric["MetricName"], dims) in emitted, f"{logical_id}: {sorted(dims)}"
