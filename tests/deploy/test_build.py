"""`sam build` from this machine, and the handlers run from the build output alone.

The build uses the SAM CLI in .venv-sam (made by `make sam-cli` if missing) and
writes to a temporary folder. Each handler then runs in a fresh interpreter that
sees only what Lambda would: the built function folder (/var/task), the built
layer's python/ (/opt/python), the standard library, and, after them, the
runtime's own boto3. `-I -S` keeps the dev venv and every site-packages out
(no site module, no PYTHON* variables, no script folder on sys.path).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.binaries import lambda_python
from tests.support.sam_local import sam_local_environment
from tools import ROOT
from tools.runtime.template import functions, load_template
from tools.standins.sentry_ingest import sentry_ingest

pytestmark = pytest.mark.slow

SAM_VENV = ROOT / ".venv-sam"
ELF_MACHINE_AARCH64 = 183
# What the Lambda python3.13 runtime ships besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")

RUNNER = r"""
import importlib, json, sys, time, uuid
task, layer, runtime, handler, event_path, timeout_s, out = sys.argv[1:8]
sys.path[:0] = [task, layer]  # Lambda's order: /var/task, then /opt/python
sys.path.append(runtime)  # the runtime's boto3 comes last

class Context:
    function_name = "build-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:build-test"
    memory_limit_in_mb = 256
    aws_request_id = str(uuid.uuid4())
    log_group_name = "/aws/lambda/build-test"
    log_stream_name = "build-test"
    _deadline = time.monotonic() + float(timeout_s)
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

module_name, attr = handler.rsplit(".", 1)
fn = getattr(importlib.import_module(module_name), attr)
with open(event_path) as f:
    event = json.load(f)
result = fn(event, Context())
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
with open(out, "w") as f:
    json.dump({"result": result, "version": list(sys.version_info[:2]), "files": files,
               "boto3_loaded": "boto3" in sys.modules}, f, default=str)
"""


@dataclass(frozen=True)
class Build:
    dir: Path
    log: str

    @property
    def layer(self) -> Path:
        return self.dir / "OpsLayer" / "python"


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    # CI starts from nothing: make the SAM venv here if `make build` has not yet.
    made = _run(["make", "--no-print-directory", "sam-cli"], timeout=900, cwd=ROOT)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    out = tmp_path_factory.mktemp("sam") / "build"
    # A plain `sam build`, as a user types it: the Makefiles find the python3.13 for the
    # bytecode themselves; a machine without one says "ship without" explicitly.
    env = {k: v for k, v in os.environ.items() if k != "LAMBDA_PYTHON"}
    env.update(SAM_CLI_TELEMETRY="0", BUILD_PYTHON=str(SAM_VENV / "bin" / "python"))
    if not lambda_python():
        env["LAMBDA_PYTHON"] = "none"
    proc = _run(
        [str(SAM_VENV / "bin" / "sam"), "build", "--build-dir", str(out), "--no-cached"],
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return Build(out, log)


@functools.cache
def _runtime_python() -> str:
    """The Lambda runtime's Python (3.13) when this machine has one, else this interpreter:
    the layer's wheels are pure Python, so both must import them."""
    return lambda_python() or sys.executable


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in for the runtime's own packages (boto3 and what it needs)."""
    out = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        src = Path(spec.origin)
        src = src.parent if src.name == "__init__.py" else src
        (out / src.name).symlink_to(src)
    assert (out / "boto3").exists()
    return out


@dataclass(frozen=True)
class Invocation:
    result: Any
    version: list[int]
    files: list[str]
    boto3_loaded: bool
    output: str


def _invoke(
    build: Build, runtime: Path, function_id: str, event: str, env: dict[str, str], tmp: Path
) -> Invocation:
    spec = functions(load_template(build.dir / "template.yaml"))[function_id]
    task = build.dir / function_id
    out = tmp / f"{function_id}-{Path(event).stem}.json"
    proc = _run(
        [
            _runtime_python(),
            "-I",
            "-S",
            "-c",
            RUNNER,
            str(task),
            str(build.layer),
            str(runtime),
            spec.handler,
            str(ROOT / "events" / event),
            str(spec.timeout_s),
            str(out),
        ],
        timeout=120,
        cwd=task,  # Lambda's working directory is /var/task
        env={
            **spec.environment,
            **env,
            "AWS_LAMBDA_FUNCTION_NAME": "build-test",
            "AWS_REGION": "eu-west-1",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "BuildTest",
            "TZ": ":UTC",
        },
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    data = json.loads(out.read_text())
    return Invocation(output=output, **data)


def _assert_only_lambda_paths(
    inv: Invocation, build: Build, function_id: str, runtime: Path
) -> None:
    allowed = (str(build.dir / function_id), str(build.layer), str(runtime))
    for f in inv.files:
        if f.startswith(allowed):
            continue
        # Anything else must be the interpreter's standard library.
        assert "site-packages" not in f and "dist-packages" not in f, f
        assert str(ROOT) not in f, f"{f}: loaded from the source tree, not the build"


@dataclass(frozen=True)
class BuildOutput:
    """The built functions, run as Lambda runs them against the test database."""

    build: Build
    runtime: Path
    database_url: str
    tmp: Path

    def invoke(self, function_id: str, event: str) -> Invocation:
        env = {"DATABASE_URL": self.database_url}
        return _invoke(self.build, self.runtime, function_id, event, env, self.tmp)

    def assert_only_lambda_paths(self, inv: Invocation, function_id: str) -> None:
        _assert_only_lambda_paths(inv, self.build, function_id, self.runtime)


@pytest.fixture
def build_output(
    sam_build: Build, runtime_dir: Path, database_url: str, tmp_path: Path
) -> BuildOutput:
    return BuildOutput(sam_build, runtime_dir, database_url, tmp_path)


# -- the build itself ---------------------------------------------------------------------


def test_build_uses_makefiles_only(sam_build: Build) -> None:
    """No step needs python3.13 on PATH or Docker: every artifact is a makefile build."""
    builders = set(re.findall(r"Running (\w+):", sam_build.log))
    assert builders and all(b.startswith("CustomMake") for b in builders), builders
    built = {p.name for p in sam_build.dir.iterdir() if p.is_dir()}
    assert built == {"OpsLayer", *functions()}


def test_layer_has_the_runtime_dependencies_and_no_boto3(sam_build: Build) -> None:
    layer = sam_build.layer
    for pkg in ("ops", "pg8000", "scramp", "aws_lambda_powertools"):
        assert (layer / pkg / "__init__.py").is_file(), pkg
    assert not (layer / "prometheus_client").exists()  # no runtime code imports it
    assert not list(layer.glob("boto3*")) and not list(layer.glob("botocore*"))
    # Every pinned requirement is installed at its pinned version.
    for line in (ROOT / "layers/ops/requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            name = re.sub(r"[-_.]+", "_", m[1]).lower()
            dists = {p.name.lower() for p in layer.glob("*.dist-info")}
            assert f"{name}-{m[2]}.dist-info" in dists, (line, sorted(dists))


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_layer_requires_exactly_what_runtime_code_imports() -> None:
    """layers/ops/requirements.txt pins each third-party package that the layer's or a
    function's code imports, and nothing else (boto3 and friends come with the runtime)."""
    sources = [*(ROOT / "layers/ops/ops").rglob("*.py"), *(ROOT / "functions").glob("*/*.py")]
    first_party = {"ops"} | {p.name for p in (ROOT / "functions").iterdir() if p.is_dir()}
    imported: set[str] = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - first_party - set(sys.stdlib_module_names) - set(RUNTIME_PACKAGES)
    distributions = importlib.metadata.packages_distributions()
    needed = {_dist_name(d) for top in third_party for d in distributions[top]}
    lines = (ROOT / "layers/ops/requirements.txt").read_text().splitlines()
    pinned = {_dist_name(m[1]) for x in lines if (m := re.match(r"^([A-Za-z0-9_.-]+)==", x))}
    assert needed == pinned


def test_bytecode_is_the_runtimes_only(sam_build: Build) -> None:
    """Shipped .pyc must be CPython 3.13's (a read-only /opt can't cache any other), and
    present when this machine has a 3.13 to compile with: it saves every cold start ~160 ms."""
    pycs = list(sam_build.dir.rglob("*.pyc"))
    assert all(p.name.endswith(".cpython-313.pyc") for p in pycs), pycs[:5]
    if lambda_python():
        for module in ("python/ops/db", "python/ops/api", "python/pg8000/native"):
            path = sam_build.layer.parent / module
            assert (path.parent / "__pycache__" / f"{path.name}.cpython-313.pyc").is_file()
        health = sam_build.dir / "HealthFunction" / "health"
        assert (health / "__pycache__" / "app.cpython-313.pyc").is_file()


def _without_python313(tmp: Path) -> dict[str, str]:
    """A machine with no python3.13: nowhere on PATH, no pyenv, no LAMBDA_PYTHON."""
    for system in ("/usr/local/bin/python3.13", "/usr/bin/python3.13"):
        if Path(system).exists():
            pytest.skip(f"{system} exists: this machine cannot pretend to have no python3.13")
    path = [
        d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "python3.13").exists()
    ]
    drop = ("LAMBDA_PYTHON", "PYENV_ROOT", "PYENV_VERSION")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MAKE")}
    return {**env, "PATH": os.pathsep.join(path), "HOME": str(tmp)}


@pytest.mark.parametrize("setting", [None, "/nonexistent/python3.13", sys.executable])
def test_make_build_without_python313_fails_in_two_lines(
    tmp_path: Path, setting: str | None
) -> None:
    """No silent slow build: no python3.13 (or a LAMBDA_PYTHON that is none or not 3.13)
    stops `make build` before the SAM CLI install, naming the fix; exit 2."""
    env = _without_python313(tmp_path)
    if setting is not None:
        env["LAMBDA_PYTHON"] = setting
    out = _run(["make", "--no-print-directory", "build"], timeout=60, cwd=ROOT, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    own = [line for line in out.stderr.splitlines() if not line.startswith("make: ***")]
    assert len(own) == 2 and out.stdout == "", out.stdout + out.stderr
    assert "3.13" in own[0] and "Traceback" not in out.stderr
    assert "pyenv install 3.13" in own[1] and "LAMBDA_PYTHON=" in own[1]


def test_artifacts_target_arm64_python313(sam_build: Build) -> None:
    for so in sam_build.dir.rglob("*.so*"):
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", so
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE_AARCH64, f"{so}: not arm64"
    for wheel in sam_build.layer.glob("*.dist-info/WHEEL"):
        for tag in re.findall(r"^Tag: (\S+)", wheel.read_text(), re.M):
            _py, abi, plat = tag.split("-")
            assert plat == "any" or "aarch64" in plat, f"{wheel.parent.name}: {tag}"
            assert abi in ("none", "abi3", "cp313"), f"{wheel.parent.name}: {tag}"


def test_functions_ship_only_their_own_modules(sam_build: Build) -> None:
    """/var/task holds the function's package alone (not the other functions', no tests)."""
    for fid, spec in functions().items():
        task = sam_build.dir / fid
        assert {p.name for p in task.iterdir()} == {spec.package}, fid
        shipped = {p.name for p in (task / spec.package).iterdir() if p.name != "__pycache__"}
        sources = {
            p.name
            for p in spec.package_dir.glob("*.py")
            if not p.name.startswith(("test_", "conftest"))
        }
        assert shipped == sources, (fid, shipped ^ sources)


TRANSFORM = r"""
import json, sys
from cfnlint.decode import decode
from samtranslator.translator.transform import transform

class NoManagedPolicies:
    def load(self):
        return {}

template, errors = decode(sys.argv[1])
assert not errors, errors
for res in template["Resources"].values():  # `sam package` would put S3 URIs here
    for key in ("CodeUri", "ContentUri"):
        if key in res.get("Properties", {}):
            res["Properties"][key] = "s3://bucket/key"
print(json.dumps(transform(json.loads(json.dumps(template)), {}, NoManagedPolicies())))
"""


def test_sam_transform_one_stage_and_only_the_templates_roles(sam_build: Build) -> None:
    """What CloudFormation will deploy, via SAM's own translator: SAM adds neither an
    extra "Stage" stage (unthrottled, unlogged) nor a role with its blanket
    AWSLambdaVPCAccessExecutionRole to any function."""
    proc = _run(
        [str(SAM_VENV / "bin" / "python"), "-c", TRANSFORM, str(ROOT / "template.yaml")],
        timeout=120,
        env={**os.environ, "AWS_DEFAULT_REGION": "eu-west-1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resources = json.loads(proc.stdout)["Resources"]
    by_type: dict[str, list[str]] = {}
    for rid, res in resources.items():
        by_type.setdefault(res["Type"], []).append(rid)
    assert len(by_type["AWS::ApiGateway::Stage"]) == 1
    for rid in by_type["AWS::ApiGateway::Deployment"]:
        assert "StageName" not in resources[rid]["Properties"], rid
    source = load_template()["Resources"]
    for rid in by_type["AWS::Lambda::Function"]:
        role = resources[rid]["Properties"]["Role"]["Fn::GetAtt"][0]
        assert source[role]["Type"] == "AWS::IAM::Role", f"{rid}: role generated by SAM"
    assert "AWSLambdaVPCAccessExecutionRole" not in proc.stdout


# -- handlers from the build output -------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("health.json", {"status": "ok", "db": "connected"}),
        ("health-live.json", None),
    ],
)
def test_health_from_build_output(
    build_output: BuildOutput, database_url: str, event: str, body: dict[str, str] | None
) -> None:
    inv = build_output.invoke("HealthFunction", event)
    assert inv.result["statusCode"] == 200, inv.output[-3000:]
    parsed = json.loads(inv.result["body"])
    if body:
        assert parsed == body
    else:
        assert parsed["status"] == "ok"
    # DATABASE_URL needs no AWS API, so the health function must not pay for boto3.
    assert not inv.boto3_loaded
    assert not any("/sentry_sdk/" in f for f in inv.files)  # no DSN: error tracking costs nothing
    build_output.assert_only_lambda_paths(inv, "HealthFunction")
    password = urlsplit(database_url).password
    assert password and password not in inv.output, "database password in the logs"


def test_metrics_from_build_output(build_output: BuildOutput) -> None:
    inv = build_output.invoke("MetricsFunction", "metrics.json")
    resp = inv.result
    assert isinstance(resp["statusCode"], int) and 200 <= resp["statusCode"] < 600
    assert resp["statusCode"] != 500, inv.output[-3000:]  # 500: the handler raised
    assert isinstance(resp["body"], str)
    assert any(k.lower() == "content-type" for k in resp["headers"])
    build_output.assert_only_lambda_paths(inv, "MetricsFunction")


def test_retention_from_build_output(build_output: BuildOutput) -> None:
    inv = build_output.invoke("RetentionFunction", "retention-scheduler.json")
    assert isinstance(inv.result, dict) and inv.result, inv.output[-3000:]
    json.dumps(inv.result)  # what Lambda returns must be JSON
    build_output.assert_only_lambda_paths(inv, "RetentionFunction")


def test_error_tracking_from_build_output(build_output: BuildOutput) -> None:
    """With a DSN, the layer's sentry-sdk is imported and set up as the container starts."""
    with sentry_ingest() as ingest:
        inv = _invoke(
            build_output.build,
            build_output.runtime,
            "HealthFunction",
            "health.json",
            {"DATABASE_URL": build_output.database_url, "SENTRY_DSN": ingest.dsn},
            build_output.tmp,
        )
    assert inv.result["statusCode"] == 200, inv.output[-3000:]
    assert any("/sentry_sdk/" in f for f in inv.files)
    assert '"message":"error tracking on"' in inv.output
    build_output.assert_only_lambda_paths(inv, "HealthFunction")
    assert not ingest.events()  # a successful invocation sends nothing


# -- sam local, where Docker runs ----------------------------------------------------------

FUNCTIONS_IN_TEMPLATE = functions(load_template())
SAM_LOCAL_ENV = ROOT / "events" / "env.local.json"
EVENT_OF = {
    "HealthFunction": "health.json",
    "MetricsFunction": "metrics.json",
    "RetentionFunction": "retention-dry-run.json",
}


def test_sam_local_env_file_sets_what_the_template_declares(sam_build: Build) -> None:
    """sam local silently ignores a variable the template does not declare: every one of
    the shipped file's reaches every function, and DB_SECRET_ARN (the deploy's required
    DbSecretArn, unresolved locally) is emptied."""
    shipped = json.loads(SAM_LOCAL_ENV.read_text())["Parameters"]
    envs = sam_local_environment(sam_build.dir / "template.yaml", SAM_LOCAL_ENV)
    assert set(envs) == set(EVENT_OF) == set(FUNCTIONS_IN_TEMPLATE)
    for fid, env in envs.items():
        assert {k: env.get(k) for k in shipped} == shipped, fid
        assert env["DATABASE_URL"].startswith("postgresql://") and env["DB_SECRET_ARN"] == ""
    # Without the file: no database URL, and the secret's parameter is not a usable ARN.
    bare = sam_local_environment(sam_build.dir / "template.yaml", None)
    assert all(env["DATABASE_URL"] == "" for env in bare.values())


def test_sam_local_environment_reaches_the_database(
    sam_build: Build, runtime_dir: Path, database_url: str, tmp_path: Path
) -> None:
    """`sam local invoke FN -e events/… --env-vars events/env.local.json`, the container left
    out: each built function runs with the environment SAM gives it (the file's
    DATABASE_URL pointed at this test's database) and answers from the database."""
    shipped = json.loads(SAM_LOCAL_ENV.read_text())["Parameters"]
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"Parameters": {**shipped, "DATABASE_URL": database_url}}))
    envs = sam_local_environment(sam_build.dir / "template.yaml", env_file)
    for fid, event in EVENT_OF.items():
        inv = _invoke(sam_build, runtime_dir, fid, event, envs[fid], tmp_path)
        if fid == "RetentionFunction":
            assert inv.result["status"] == "completed" and inv.result["dryRun"], inv.output
        else:
            assert inv.result["statusCode"] == 200, inv.output[-3000:]
        if fid == "HealthFunction":
            assert json.loads(inv.result["body"]) == {"status": "ok", "db": "connected"}
