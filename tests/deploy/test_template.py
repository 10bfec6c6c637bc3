"""template.yaml: lint-clean, and the properties operators rely on.

cfn-lint runs exactly as developers and CI run it (`cfn-lint` in the project folder,
which reads .cfnlintrc and so the serverless rules). The structure tests read the raw
template with the CFN-tag-tolerant loader the local gateway uses.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tools import ROOT
from tools.runtime.template import load_template

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBAL_FN: dict[str, Any] = TEMPLATE["Globals"]["Function"]
FUNCTIONS = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function"}

# The secrets each function reads; anything more is a least-privilege regression.
# Every function reads the Sentry DSN secret when error tracking is on.
# Every function flushes its metrics, so reads the metrics database's secret when given.
SECRETS_READ = {
    "HealthFunction": {
        "DbSecretArn",
        "MetricsTokenSecretArn",
        "SentryDsnSecretArn",
        "MetricsDbSecretArn",
    },
    "MetricsFunction": {
        "DbSecretArn",
        "MetricsTokenSecretArn",
        "SentryDsnSecretArn",
        "MetricsDbSecretArn",
    },
    "RetentionFunction": {"DbSecretArn", "SentryDsnSecretArn", "MetricsDbSecretArn"},
}
# Actions that have no resource-level permissions and so may use Resource "*".
STAR_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:PutSpans",  # X-Ray's OTLP endpoint (OtelTracing=xray); no resource-level permissions
    "xray:PutSpansForIndexing",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}

CFN_LINT = "import sys; from cfnlint.runner import main; sys.exit(main())"


def _cfn_lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CFN_LINT], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _ref(value: Any) -> str | None:
    return value.get("Ref") if isinstance(value, dict) else None


def _getatt_target(value: Any) -> str | None:
    """`!GetAtt X.Arn` (loaded as {"Fn::GetAtt": "X.Arn"}) -> "X"."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return (target.split(".")[0] if isinstance(target, str) else target[0]) or None
    return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _if_branches(value: Any) -> list[Any]:
    """Every value a (possibly conditional) property can take."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        return _if_branches(yes) + _if_branches(no)
    return [value]


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    """Inline statements of a role plus those of the template's managed policies it attaches."""
    docs = [p["PolicyDocument"] for p in role["Properties"].get("Policies", [])]
    for arn in role["Properties"].get("ManagedPolicyArns", []):
        name = _ref(arn)
        assert name in RESOURCES, f"only this template's policies, not AWS-managed ones: {arn}"
        docs.append(RESOURCES[name]["Properties"]["PolicyDocument"])
    out: list[dict[str, Any]] = []
    for doc in docs:
        for stmt in doc["Statement"]:
            out.extend(s for s in _if_branches(stmt) if s != {"Ref": "AWS::NoValue"})
    return out


def _role_of(function_id: str) -> dict[str, Any]:
    props = FUNCTIONS[function_id]["Properties"]
    role_id = _getatt_target(props.get("Role"))
    assert role_id, f"{function_id}: explicit Role expected"
    return RESOURCES[role_id]


# -- lint -----------------------------------------------------------------------------


def test_cfn_lint_with_serverless_rules_is_clean() -> None:
    proc = _cfn_lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cfnlintrc_enables_the_serverless_rules(tmp_path: Path) -> None:
    """A clean run means something only if the serverless rules are loaded: the same
    config must flag a function without a log group and a queue without redrive."""
    shutil.copy(ROOT / ".cfnlintrc", tmp_path / ".cfnlintrc")
    (tmp_path / "template.yaml").write_text(
        "Transform: AWS::Serverless-2016-10-31\n"
        "Resources:\n"
        "  Fn:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties: {Runtime: python3.13, Handler: app.h, CodeUri: ., MemorySize: 128,"
        " Timeout: 3, Tracing: Active}\n"
        "  Queue:\n"
        "    Type: AWS::SQS::Queue\n"
    )
    proc = _cfn_lint(tmp_path)
    assert proc.returncode != 0
    assert "WS1004" in proc.stdout and "ES6000" in proc.stdout, proc.stdout + proc.stderr


def test_every_suppression_names_a_rule_and_gives_a_reason() -> None:
    text = (ROOT / "template.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "ignore_checks" not in line:
            continue
        if line.rstrip().endswith(":"):  # block list: reasons on the item lines
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("- "):
                assert "#" in lines[j], f"line {j + 1}: suppression without a reason"
                j += 1
            assert j > i + 1
        else:
            assert "#" in line, f"line {i + 1}: suppression without a reason"


# -- runtime, build ---------------------------------------------------------------------


def test_functions_run_python313_on_arm64_with_tracing_and_the_layer() -> None:
    assert GLOBAL_FN["Runtime"] == "python3.13"
    assert GLOBAL_FN["Architectures"] == ["arm64"]
    assert GLOBAL_FN["Tracing"] == "Active"
    assert {"Ref": "OpsLayer"} in GLOBAL_FN["Layers"]
    env = GLOBAL_FN["Environment"]["Variables"]
    assert _ref(env["POWERTOOLS_SERVICE_NAME"]) == "ServiceName"
    assert _ref(env["POWERTOOLS_LOG_LEVEL"]) == "LogLevel"
    assert "LOG_LEVEL" not in env  # one name per setting: Powertools' (issue 20)
    assert _ref(env["DB_SECRET_ARN"]) == "DbSecretArn"
    # Declared for sam local's --env-vars (events/env.local.json), empty in AWS; the secret
    # stays required to deploy (no default: CloudFormation refuses a stack without it).
    assert env["DATABASE_URL"] == ""
    assert "Default" not in TEMPLATE["Parameters"]["DbSecretArn"]
    assert env["DB_HOST"]["Fn::If"][0] == "HasDbHostOverride"
    assert set(FUNCTIONS) >= set(SECRETS_READ)
    for fid, fn in FUNCTIONS.items():
        props = fn["Properties"]
        # A per-function override would silently escape the global settings.
        for key in ("Runtime", "Architectures", "Tracing"):
            assert props.get(key, GLOBAL_FN[key]) == GLOBAL_FN[key], (fid, key)
        # Each function is a package of functions/, named by its Handler.
        assert props["CodeUri"] == "functions/", fid
        package, handler = props["Handler"].split(".", 1)
        assert handler == "app.lambda_handler", fid
        assert (ROOT / "functions" / package / "__init__.py").is_file(), fid
        assert (ROOT / "functions" / package / "app.py").is_file(), fid


def test_layer_targets_the_runtime_and_excludes_boto3() -> None:
    layer = RESOURCES["OpsLayer"]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    reqs = (ROOT / "layers/ops/requirements.txt").read_text().lower()
    names = {re.split(r"[<>=!~\[; ]", ln.strip())[0] for ln in reqs.splitlines()}
    assert not names & {"boto3", "botocore"}, "boto3 comes with the Lambda runtime"


@pytest.mark.parametrize("resource_id", ["OpsLayer", *FUNCTIONS])
def test_every_artifact_builds_with_a_makefile(resource_id: str) -> None:
    """No local python3.13 or Docker needed: see layers/ops/Makefile."""
    res = RESOURCES[resource_id]
    assert res["Metadata"]["BuildMethod"] == "makefile"
    assert res["Metadata"]["BuildArchitecture"] == "arm64"
    uri = res["Properties"].get("CodeUri") or res["Properties"]["ContentUri"]
    makefile = (ROOT / uri / "Makefile").read_text()
    assert f"build-{resource_id}:" in makefile
    if resource_id != "OpsLayer":  # the function's target copies the Handler's package
        package = res["Properties"]["Handler"].split(".")[0]
        assert f"build-{resource_id}: PACKAGE := {package}\n" in makefile
    # Dependencies are resolved for the Lambda runtime, never for the building machine.
    assert "manylinux2014_aarch64" in makefile and "3.13" in makefile


def test_samconfig_deploy_defaults() -> None:
    cfg = tomllib.loads((ROOT / "samconfig.toml").read_text())
    deploy = cfg["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True
    assert deploy["confirm_changeset"] is True
    assert cfg["default"]["validate"]["parameters"]["lint"] is True


# -- API --------------------------------------------------------------------------------


def test_api_has_one_traced_stage_with_throttling() -> None:
    props = RESOURCES["Api"]["Properties"]
    assert props["TracingEnabled"] is True
    # Without OpenApiVersion SAM adds a stage named "Stage" with no throttling or logs.
    assert props["OpenApiVersion"].startswith("3.")
    (setting,) = props["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert _ref(setting["ThrottlingRateLimit"]) == "ApiThrottleRateLimit"
    assert _ref(setting["ThrottlingBurstLimit"]) == "ApiThrottleBurstLimit"


def test_access_log_is_json_with_the_request_id() -> None:
    access = RESOURCES["Api"]["Properties"]["AccessLogSetting"]
    group = RESOURCES[_getatt_target(access["DestinationArn"]) or ""]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert "RetentionInDays" in group["Properties"]
    # Numbers ($context.status) are unquoted in the format; quote them to parse it.
    fmt = re.sub(r'(?<!")(\$context\.[\w.]+)', r'"\1"', access["Format"])
    fields = json.loads(fmt)
    assert fields["requestId"] == "$context.requestId"  # the handlers' correlation id
    assert fields["status"] == "$context.status"
    assert fields["type"] == "access"
    for key in ("method", "resourcePath", "responseLatency", "integrationLatency"):
        assert key in fields


API_FUNCTIONS = sorted(
    fid
    for fid, fn in FUNCTIONS.items()
    if any(e["Type"] == "Api" for e in (fn["Properties"].get("Events") or {}).values())
)


def test_health_and_metrics_are_api_functions() -> None:
    assert {"HealthFunction", "MetricsFunction"} <= set(API_FUNCTIONS)


@pytest.mark.parametrize("fid", API_FUNCTIONS)
def test_api_functions_answer_before_the_gateway_timeout(fid: str) -> None:
    # API Gateway gives up after 29 s: the function must answer (503) before that.
    assert FUNCTIONS[fid]["Properties"].get("Timeout", GLOBAL_FN["Timeout"]) < 29


# -- logs -------------------------------------------------------------------------------


def test_every_function_has_its_own_log_group_with_retention() -> None:
    seen = set()
    for fid, fn in FUNCTIONS.items():
        group_id = _ref(fn["Properties"]["LoggingConfig"]["LogGroup"])
        assert group_id, f"{fid}: LoggingConfig.LogGroup must reference a log group"
        group = RESOURCES[group_id]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert _ref(group["Properties"]["RetentionInDays"]) == "LogRetentionDays"
        assert group_id not in seen, f"{fid} shares {group_id}"
        seen.add(group_id)


# -- retention schedule -----------------------------------------------------------------


def test_retention_runs_at_3am_in_the_configured_time_zone_with_retries_and_dlq() -> None:
    events = FUNCTIONS["RetentionFunction"]["Properties"]["Events"]
    (schedule,) = [e["Properties"] for e in events.values() if e["Type"] == "ScheduleV2"]
    assert schedule["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert _ref(schedule["ScheduleExpressionTimezone"]) == "RetentionScheduleTimezone"
    assert TEMPLATE["Parameters"]["RetentionScheduleTimezone"]["Default"] == "UTC"
    assert schedule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    dlq_id = _getatt_target(schedule["DeadLetterConfig"]["Arn"]) or ""
    assert RESOURCES[dlq_id]["Type"] == "AWS::SQS::Queue"
    # Scheduler invokes asynchronously: a run that raises is retried by Lambda and must
    # reach the same queue (and the role must be allowed to send there).
    invoke = FUNCTIONS["RetentionFunction"]["Properties"]["EventInvokeConfig"]
    assert invoke["MaximumRetryAttempts"] >= 1
    on_failure = invoke["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS" and _getatt_target(on_failure["Destination"]) == dlq_id
    sends = [
        s
        for s in _statements(_role_of("RetentionFunction"))
        if "sqs:SendMessage" in _as_list(s["Action"])
    ]
    assert [_getatt_target(s["Resource"]) for s in sends] == [dlq_id]


# -- IAM --------------------------------------------------------------------------------


@pytest.mark.parametrize("fid", sorted(SECRETS_READ))
def test_function_reads_only_the_secrets_it_uses(fid: str) -> None:
    fn_props = FUNCTIONS[fid]["Properties"]
    # With Role set, SAM ignores Policies: a permission added there would silently vanish.
    assert "Policies" not in fn_props, f"{fid}: add permissions to its role instead"
    secrets: set[str] = set()
    for stmt in _statements(_role_of(fid)):
        actions = set(_as_list(stmt["Action"]))
        if not any(a.startswith("secretsmanager:") for a in actions):
            continue
        assert actions == {"secretsmanager:GetSecretValue"}, (fid, actions)
        for resource in _if_branches(stmt["Resource"]):
            for item in _as_list(resource):
                assert _ref(item), f"{fid}: secret resources must be parameters, got {item}"
                secrets.add(str(_ref(item)))
    assert secrets == SECRETS_READ[fid]


@pytest.mark.parametrize("fid", sorted(SECRETS_READ))
def test_function_role_is_least_privilege(fid: str) -> None:
    role = _role_of(fid)
    principal = role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "lambda.amazonaws.com"}
    own_group = _ref(FUNCTIONS[fid]["Properties"]["LoggingConfig"]["LogGroup"])
    logs_ok = False
    for stmt in _statements(role):
        assert stmt["Effect"] == "Allow"
        actions = set(_as_list(stmt["Action"]))
        assert not any(a == "*" or a.endswith(":*") for a in actions), actions
        if stmt["Resource"] == "*":
            assert actions <= STAR_RESOURCE_ACTIONS, actions
        if any(a.startswith("logs:") for a in actions):
            assert actions <= {"logs:CreateLogStream", "logs:PutLogEvents"}
            assert _getatt_target(stmt["Resource"]) == own_group
            logs_ok = True
    assert logs_ok, f"{fid} cannot write its own logs"


def test_vpc_permissions_only_when_subnets_are_given() -> None:
    assert TEMPLATE["Conditions"]["HasVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "VpcSubnetIds"}]}, ""]}]
    }
    assert GLOBAL_FN["VpcConfig"]["Fn::If"][0] == "HasVpc"
    base = RESOURCES["FunctionBasePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    for stmt in base:
        branches = _if_branches(stmt)
        actions = {a for s in branches if "Action" in s for a in _as_list(s["Action"])}
        if any(a.startswith("ec2:") for a in actions):
            assert stmt["Fn::If"][0] == "HasVpc"
            assert stmt["Fn::If"][2] == {"Ref": "AWS::NoValue"}
            break
    else:
        pytest.fail("no VPC network-interface statement")


def test_error_tracking_is_off_unless_a_dsn_secret_is_given() -> None:
    """No Sentry setting reaches a function, and no role may read the secret, without it."""
    assert TEMPLATE["Parameters"]["SentryDsnSecretArn"]["Default"] == ""
    assert TEMPLATE["Conditions"]["HasSentry"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "SentryDsnSecretArn"}, ""]}]
    }
    env = GLOBAL_FN["Environment"]["Variables"]
    sentry_vars = sorted(k for k in env if k.startswith("SENTRY_"))
    assert sentry_vars == [
        "SENTRY_DSN_SECRET_ARN",
        "SENTRY_SAMPLE_RATE",
        "SENTRY_TRACES_SAMPLE_RATE",
    ]
    for name in sentry_vars:
        condition, _, otherwise = env[name]["Fn::If"]
        assert (condition, otherwise) == ("HasSentry", {"Ref": "AWS::NoValue"}), name
    for fn in FUNCTIONS.values():  # no function sets one of its own
        assert not any(
            k.startswith("SENTRY_")
            for k in fn["Properties"].get("Environment", {}).get("Variables", {})
        )
    base = RESOURCES["FunctionBasePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    reads = [
        stmt
        for stmt in base
        if any(_ref(s.get("Resource")) == "SentryDsnSecretArn" for s in _if_branches(stmt))
    ]
    assert len(reads) == 1 and reads[0]["Fn::If"][0] == "HasSentry"
    assert reads[0]["Fn::If"][2] == {"Ref": "AWS::NoValue"}


def test_a_separate_metrics_database_is_off_unless_its_secret_is_given() -> None:
    """MetricsDbSecretArn empty (the default): no METRICS_* database variable reaches a
    function, no role reads a secret for it, no alarm; given: every function gets it (each
    flushes), every role reads that secret only, and MetricsStoreDown alarms."""
    params = TEMPLATE["Parameters"]
    assert params["MetricsDbSecretArn"]["Default"] == ""
    assert TEMPLATE["Conditions"]["HasMetricsDb"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MetricsDbSecretArn"}, ""]}]
    }
    env = GLOBAL_FN["Environment"]["Variables"]
    assert env["METRICS_DB_SECRET_ARN"]["Fn::If"] == [
        "HasMetricsDb",
        {"Ref": "MetricsDbSecretArn"},
        {"Ref": "AWS::NoValue"},
    ]
    assert env["METRICS_DB_HOST"]["Fn::If"][0] == "HasMetricsDbHostOverride"
    assert env["METRICS_DATABASE_URL"] == ""  # sam local's --env-vars only, as DATABASE_URL
    rule = TEMPLATE["Rules"]["MetricsDbHostNeedsItsSecret"]
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MetricsDbSecretArn"}, ""]}]
    }
    base = RESOURCES["FunctionBasePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    reads = [
        stmt
        for stmt in base
        if any(_ref(s.get("Resource")) == "MetricsDbSecretArn" for s in _if_branches(stmt))
    ]
    assert len(reads) == 1 and reads[0]["Fn::If"][0] == "HasMetricsDb"
    assert reads[0]["Fn::If"][2] == {"Ref": "AWS::NoValue"}
    alarm = RESOURCES["MetricsStoreDownAlarm"]
    assert alarm["Condition"] == "HasMetricsDb"
    dims = {d["Name"]: d["Value"] for d in alarm["Properties"]["Dimensions"]}
    # The scrape's check name (tests/metrics/test_metrics_database.py reads it in the logs).
    assert dims == {"service": {"Ref": "ServiceName"}, "check": "metrics_store"}


@pytest.mark.parametrize(
    ("parameter", "variable", "field"),
    [
        ("MetricsFlushIntervalSeconds", "METRICS_FLUSH_INTERVAL_S", "metrics_flush_interval_s"),
        ("ProbeLogSampleRate", "PROBE_LOG_SAMPLE_RATE", "probe_log_sample_rate"),
    ],
)
def test_a_setting_parameter_defaults_to_the_settings_default(
    parameter: str, variable: str, field: str
) -> None:
    from ops.config import Settings

    param = TEMPLATE["Parameters"][parameter]
    assert float(param["Default"]) == getattr(Settings(), field)
    env = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert env[variable] == {"Ref": parameter}


def test_every_api_route_reaches_its_function_for_head_and_options() -> None:
    """API Gateway REST routes only the methods a route declares (the rest are its 403):
    HEAD (load balancers, uptime checks) and OPTIONS must reach the router, which answers
    them for every GET route; `any` also leaves the 405s, with `Allow`, to it."""
    from tools.runtime.template import functions

    routes = [route for spec in functions(TEMPLATE).values() for route in spec.routes]
    assert routes
    assert [r for r in routes if r.method != "ANY"] == []


def test_tracing_is_off_unless_asked_for_and_then_goes_to_xrays_otlp_endpoint() -> None:
    """OtelTracing=xray sets the two OTEL_* variables ops.config reads and grants PutSpans;
    by default neither variable reaches a function (OpenTelemetry never loads)."""
    from ops.tracing import xray_region

    param = TEMPLATE["Parameters"]["OtelTracing"]
    assert (param["Default"], param["AllowedValues"]) == ("off", ["off", "xray"])
    assert TEMPLATE["Conditions"]["HasOtelTracing"] == {
        "Fn::Equals": [{"Ref": "OtelTracing"}, "xray"]
    }
    env = GLOBAL_FN["Environment"]["Variables"]
    assert sorted(k for k in env if k.startswith("OTEL_")) == [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
    ]
    condition, exporter, otherwise = env["OTEL_TRACES_EXPORTER"]["Fn::If"]
    assert (condition, exporter, otherwise) == ("HasOtelTracing", "otlp", {"Ref": "AWS::NoValue"})
    condition, endpoint, otherwise = env["OTEL_EXPORTER_OTLP_ENDPOINT"]["Fn::If"]
    assert (condition, otherwise) == ("HasOtelTracing", {"Ref": "AWS::NoValue"})
    # ops.tracing appends /v1/traces and signs what goes to this host.
    url = endpoint["Fn::Sub"].replace("${AWS::Region}", "eu-west-1") + "/v1/traces"
    assert xray_region(url) == "eu-west-1"
    for fn in FUNCTIONS.values():  # no function overrides them
        assert not any(
            k.startswith("OTEL_")
            for k in fn["Properties"].get("Environment", {}).get("Variables", {})
        )
    base = RESOURCES["FunctionBasePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    grants = [
        s
        for s in base
        if isinstance(s, dict) and "Fn::If" in s and s["Fn::If"][0] == "HasOtelTracing"
    ]
    assert len(grants) == 1
    statement = grants[0]["Fn::If"][1]
    assert statement["Action"] == ["xray:PutSpans", "xray:PutSpansForIndexing"]
    assert grants[0]["Fn::If"][2] == {"Ref": "AWS::NoValue"}
