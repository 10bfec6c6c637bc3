"""One Lambda container in a fresh interpreter, laid out as Lambda lays it out (PYTHONPATH:
the folder holding the function's package as /var/task, then the layer as /opt/python;
`-P -s`: no script folder, no user site, nothing else from this shell), invoked with a
list of events. The child ends with os._exit right after its last invocation, as a
frozen container would: no atexit flush, so whatever arrives at a loopback stand-in
(Sentry's ingest, an OTLP receiver) was sent before the invocation returned.

Each invocation's outcome says what it returned or raised, when (time.monotonic(), one
clock for every process), and which optional SDKs were loaded by then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools import LAYER_DIR

MARK = "@@invocations@@"

CHILD = r"""
import importlib, json, os, sys, time, uuid
spec = json.loads(sys.stdin.read())
if spec.get("dsn_secret"):  # Secrets Manager (moto) holds the DSN, as in AWS
    import boto3
    from moto import mock_aws
    mock_aws().start()
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = client.create_secret(Name="sentry-dsn", SecretString=spec["dsn_secret"])["ARN"]
    os.environ["SENTRY_DSN_SECRET_ARN"] = arn

class Context:
    function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:" + function_name
    memory_limit_in_mb = 256
    log_group_name = "/aws/lambda/" + function_name
    log_stream_name = "test"
    def __init__(self):
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + spec.get("timeout_s", 10)
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

if spec.get("lambda_runtime"):
    # The runtime's `bootstrap` module as the SDK's AwsLambdaIntegration finds and patches
    # it: each invocation goes through handle_event_request, which posts the result or
    # the error back to the runtime API.
    import types
    bootstrap = types.ModuleType("bootstrap")

    class LambdaRuntimeClient:
        def post_init_error(self, error_response_data, error_type_override=None):
            raise AssertionError("init failed")
        def post_invocation_result(self, invoke_id, result_data, content_type="application/json"):
            self.posted = {"status": result_data.get("statusCode", "returned")}
        def post_invocation_error(self, invoke_id, error_response_data, xray_fault):
            self.posted = {"raised": error_response_data}

    def handle_event_request(lambda_runtime_client, request_handler, invoke_id, event, ctx):
        try:
            result = request_handler(event, ctx)
        except Exception as exc:
            lambda_runtime_client.post_invocation_error(invoke_id, type(exc).__name__, "")
        else:
            lambda_runtime_client.post_invocation_result(invoke_id, result)

    bootstrap.LambdaRuntimeClient = LambdaRuntimeClient
    bootstrap.handle_event_request = handle_event_request
    sys.modules["bootstrap"] = bootstrap

module_name, _, attr = spec["handler"].rpartition(".")
lambda_handler = getattr(importlib.import_module(module_name), attr)  # as the runtime does
results = []
for i, event in enumerate(spec["events"]):
    headers = spec.get("trace_headers") or []
    if i < len(headers):  # Lambda sets the invocation's X-Ray header before each call
        os.environ["_X_AMZN_TRACE_ID"] = headers[i]
    ctx = Context()
    outcome = {"aws_request_id": ctx.aws_request_id, "started_at": time.monotonic()}
    if spec.get("lambda_runtime"):
        client = bootstrap.LambdaRuntimeClient()
        # Looked up at call time, as the runtime's loop does: the patched one when Sentry is on.
        bootstrap.handle_event_request(client, lambda_handler, ctx.aws_request_id, event, ctx)
        outcome.update(client.posted)
    else:
        try:
            result = lambda_handler(event, ctx)
            outcome["status"] = result.get("statusCode", "returned")
        except Exception as exc:
            outcome["raised"] = type(exc).__name__
    outcome["returned_at"] = time.monotonic()
    outcome["sentry_loaded"] = "sentry_sdk" in sys.modules
    outcome["otel_loaded"] = sorted(n for n in sys.modules if n.split(".")[0] == "opentelemetry")
    results.append(outcome)
sys.stdout.write("MARK" + json.dumps(results) + "\n")
sys.stdout.flush()
os._exit(0)
""".replace("MARK", MARK)


def run_in_fresh_process(
    package_dir: Path,
    events: list[dict[str, Any]],
    env: dict[str, str],
    *,
    function_name: str,
    dsn_secret: str | None = None,
    lambda_runtime: bool = False,
    timeout_s: float = 10,
    trace_headers: list[str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """(the outcome of each event, everything the process printed) of the function whose
    package is `package_dir` (Handler: <package>.app.lambda_handler). `trace_headers`: the
    `_X_AMZN_TRACE_ID` Lambda sets before each invocation, in order."""
    task_root = package_dir.parent
    proc = subprocess.run(
        [sys.executable, "-P", "-s", "-c", CHILD],
        input=json.dumps(
            {
                "handler": f"{package_dir.name}.app.lambda_handler",
                "events": events,
                "dsn_secret": dsn_secret,
                "lambda_runtime": lambda_runtime,
                "timeout_s": timeout_s,
                "trace_headers": trace_headers or [],
            }
        ),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=task_root,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.pathsep.join((str(task_root), str(LAYER_DIR))),
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            **env,
        },
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and MARK in proc.stdout, output[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith(MARK))
    return json.loads(line.removeprefix(MARK)), output
