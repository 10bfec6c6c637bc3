"""Health function vs baselines: cold-start proxy, warm latency, peak memory (issue 2).

Compared in one run, interleaved:
  (a) a bare handler returning constant JSON,
  (b) a process importing only Powertools Logger and `pg8000.native` (and creating
      the Logger): the least a Powertools-style database health check needs,
  (c) the same routes written the way many teams would: FastAPI + Mangum +
      prometheus-fastapi-instrumentator (`benchmarks/peer_fastapi/app.py`),
and every function of the bundle (`functions/*/app.py`), imported as Lambda does.

Every measured process runs the interpreter of `.venv-bench` (created here from
`benchmarks/requirements.txt`), so all variants import from the same site-packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from benchmarks.stats import iqr, pct, verdict
from tools import LAYER_DIR, ROOT
from tools.runtime.apigw import proxy_event

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer_fastapi"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
VENV = ROOT / ".venv-bench"
WORK = BENCH_DIR / ".work" / "health"  # git-ignored scratch space
TOKEN = "bench-token"
SERVICE = "realestate-backend"
MARK = "@@bench@@"
MEMORY_LIMIT_MB = 64.0  # "well under 128 MB": at most half of the smallest Lambda size
HEALTH_ROUTES = ("/health", "/health/live", "/health/ready", "/health/detailed")
REQUIRED_WARM = frozenset({"a", "health", "c"})  # the targets need these; others are context


@dataclass(frozen=True)
class Plan:
    cold_rounds: int
    nopyc_rounds: int
    importtime_runs: int
    warm_rounds: int
    warm_batch: int
    warmup: int


QUICK = Plan(
    cold_rounds=12, nopyc_rounds=4, importtime_runs=3, warm_rounds=8, warm_batch=40, warmup=40
)
FULL = Plan(
    cold_rounds=30, nopyc_rounds=10, importtime_runs=7, warm_rounds=20, warm_batch=100, warmup=150
)


# --------------------------------------------------------------------------------------
# The measured process. Run as `python -I -c CHILD_SRC ROLE KIND HANDLER PATHS`, it does
# nothing before the timed import but read argv (sys and time are built in), so every
# variant's import is measured from the same starting point. Roles:
#   import  import the handler and exit (for -X importtime)
#   cold    import, then one invocation with the event read from stdin; report times,
#           boto3/botocore presence and peak RSS as one marked JSON line on stdout
#   warm    import, then serve `run` commands (stdin) with timed in-process invocations;
#           the handler's stdout (its logs) goes to a file, replies to the original stdout
# --------------------------------------------------------------------------------------
CHILD_SRC = r"""
import sys, time
_t0 = time.perf_counter()
_role, _kind, _spec, _paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path[0:0] = [p for p in _paths.split("\x1f") if p]
if _kind == "bare":
    _BODY = '{"status":"ok"}'

    def handler(event, context):
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": _BODY}
elif _kind == "minimal":
    from aws_lambda_powertools import Logger
    import pg8000.native

    _logger = Logger()
    _conn = None

    def handler(event, context):
        global _conn
        from urllib.parse import unquote, urlsplit
        import os
        if _conn is None:
            u = urlsplit(os.environ["DATABASE_URL"])
            _conn = pg8000.native.Connection(
                user=unquote(u.username), password=unquote(u.password), host=u.hostname,
                port=u.port, database=u.path.lstrip("/"), timeout=2, ssl_context=False)
        _conn.run("SELECT 1")
        _logger.info("request")
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                "body": '{"status":"ok","db":"connected"}'}
else:
    _mod, _, _attr = _spec.rpartition(".")
    __import__(_mod)  # the `import` statement's path, so that -X importtime shows the module
    handler = getattr(sys.modules[_mod], _attr)
_ready = time.monotonic()
_import_s = time.perf_counter() - _t0
if _role == "import":
    raise SystemExit(0)

import json, os, resource, uuid


def _aws():
    # [boto3 loaded, number of botocore modules]. Powertools imports the bare `botocore`
    # package (under 1 ms) to register its user agent; clients and sessions are what cost.
    return ["boto3" in sys.modules, sum(m.split(".")[0] == "botocore" for m in sys.modules)]


def _peak_kb():
    # VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the spawning parent's peak across exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Ctx:
    def __init__(self, name, timeout_s):
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = "arn:aws:lambda:local:000000000000:function:" + name
        self.memory_limit_in_mb = 128
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = "/aws/lambda/" + name
        self.log_stream_name = "bench"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _fresh(template):
    event = json.loads(template)
    ctx = event.get("requestContext") if isinstance(event, dict) else None
    if isinstance(ctx, dict):
        ctx["requestId"] = ctx["extendedRequestId"] = str(uuid.uuid4())
    return event


_NAME = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "bench")
_out = sys.stdout
if _role == "cold":
    _aws_import = _aws()
    _rss_import = _peak_kb()
    _req = json.loads(sys.stdin.read())
    _status = None
    if _req.get("event") is not None:
        try:
            _resp = handler(_fresh(json.dumps(_req["event"])), _Ctx(_NAME, 10))
            _status = "returned"  # a scheduled function's result has no status code
            if isinstance(_resp, dict) and "statusCode" in _resp:
                _status = _resp["statusCode"]
        except Exception as exc:
            _status = "raised " + type(exc).__name__ + ": " + str(exc)[:120]
    _out.write(MARK + json.dumps({
        "ready": _ready, "import_s": _import_s, "status": _status,
        "aws_import": _aws_import, "aws_invoke": _aws(), "modules": len(sys.modules),
        "rss_import_kb": _rss_import, "rss_kb": _peak_kb()}) + "\n")
    _out.flush()
else:
    _proto = os.fdopen(os.dup(1), "w", buffering=1)
    _log = os.open(os.environ["BENCH_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    os.dup2(_log, 1)
    _stripped = None
    if os.environ.get("BENCH_STRIP_AFTER_INVOCATION"):
        # Diagnostic: the ops.api.Api's end-of-invocation hooks (the metrics flush) removed.
        _module = sys.modules.get(globals().get("_mod", ""))
        _hooks = getattr(getattr(_module, "app", None), "after_invocation", None)
        if isinstance(_hooks, list):
            _stripped = len(_hooks)
            _hooks.clear()
    _proto.write(MARK + json.dumps({"ready": _ready, "stripped": _stripped}) + "\n")
    for _line in sys.stdin:
        _cmd = json.loads(_line)
        if _cmd["op"] == "quit":
            break
        if _cmd["op"] == "rss":
            _proto.write(MARK + json.dumps({"rss_kb": _peak_kb(), "aws": _aws()}) + "\n")
            continue
        if _cmd["op"] == "profile":
            import cProfile, pstats
            _template = json.dumps(_cmd["event"])
            _work = [(_fresh(_template), _Ctx(_NAME, 10)) for _ in range(_cmd["n"])]
            _prof = cProfile.Profile()
            _prof.enable()
            for _event, _ctx in _work:
                handler(_event, _ctx)
            _prof.disable()
            sys.stdout.flush()
            _rows = []
            for (_file, _line, _func), _st in pstats.Stats(_prof).stats.items():
                _where = "/".join(_file.split("/")[-2:]) + ":%d:" % _line if _file != "~" else ""
                _rows.append([_where + _func, _st[1] / len(_work), _st[2] * 1e3 / len(_work),
                              _st[3] * 1e3 / len(_work)])
            _rows.sort(key=lambda r: -r[3])
            _proto.write(MARK + json.dumps({"rows": _rows[: _cmd["top"]]}) + "\n")
            continue
        _template = json.dumps(_cmd["event"])
        _work = [(_fresh(_template), _Ctx(_NAME, 10)) for _ in range(_cmd["n"])]
        _ns, _codes = [], {}
        _clock = time.perf_counter_ns
        for _event, _ctx in _work:
            _s = _clock()
            _resp = handler(_event, _ctx)
            _ns.append(_clock() - _s)
            _code = str(_resp.get("statusCode"))
            _codes[_code] = _codes.get(_code, 0) + 1
        sys.stdout.flush()
        _proto.write(MARK + json.dumps({"ns": _ns, "codes": _codes}) + "\n")
""".replace("MARK", repr(MARK))


# --------------------------------------------------------------------------------------
# Environment: the benchmark venv, the throwaway database, Lambda-like layouts
# --------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"   [health] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bench_python() -> Path:
    """`.venv-bench`'s interpreter, created or updated when the requirements changed."""
    python = VENV / "bin" / "python"
    digest = hashlib.sha256(
        REQUIREMENTS.read_bytes() + (LAYER_DIR / "requirements.txt").read_bytes()
    ).hexdigest()
    stamp = VENV / ".installed"
    with _lock(WORK.parent / "venv.lock"):
        if stamp.exists() and stamp.read_text().strip() == digest and python.exists():
            return python
        _log(f"installing {REQUIREMENTS.relative_to(ROOT)} into {VENV.name} (once)")
        if not python.exists():
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS),
            ],
            check=True,
            cwd=BENCH_DIR,
        )
        stamp.write_text(digest + "\n")
    return python


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


_NOT_IN_LAYERS = {"boto3", "botocore", "s3transfer", "pip", "setuptools", "pkg_resources"}


def nopyc_layout(python: Path, code_dirs: dict[str, Path]) -> tuple[Path, dict[str, Path]]:
    """Copies without any .pyc, as `sam build` ships the layer (pip --no-compile, then
    __pycache__ removed) and a function folder: /var/task and /opt are read-only on
    Lambda, so every cold start compiles them. The stdlib keeps its .pyc, as in the
    runtime image. Returns (the deps folder, {name: task folder}); `ops` is in deps."""
    root = WORK / "nopyc"
    shutil.rmtree(root, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    deps = root / "opt-python"
    site = _site_packages(python)
    deps.mkdir(parents=True)
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0]
        if top in _NOT_IN_LAYERS or entry.name == "__pycache__" or entry.suffix == ".pth":
            continue
        if entry.is_dir():
            shutil.copytree(entry, deps / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, deps / entry.name)
    shutil.copytree(LAYER_DIR / "ops", deps / "ops", ignore=ignore)
    tasks = {}
    for name, src in code_dirs.items():
        tasks[name] = root / f"task-{name}"
        # A function's package goes in /var/task/<package>; the peer's folder is /var/task.
        package = (src / "__init__.py").exists()
        shutil.copytree(src, tasks[name] / src.name if package else tasks[name], ignore=ignore)
    return deps, tasks


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 with the bundle's migrations applied."""
    from tools.localdb.pgcluster import PgCluster

    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="bench-health-pg-")) / "data")
    try:
        cluster.init()
        cluster.start()
        cluster.wait_ready()
        url = cluster.create_database("bench")
        try:
            from tools.localdb.migrate import apply_url

            apply_url(url)
        except Exception as exc:  # a half-written migration must not stop the benchmark
            _log(f"migrations failed ({exc!r}); continuing without them")
        yield url
    finally:
        cluster.destroy()
        shutil.rmtree(cluster.datadir.parent, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Variants and the processes that measure them
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # bare | minimal | module
    paths: tuple[str, ...] = ()
    handler: str = "app.lambda_handler"
    env: dict[str, str] = field(default_factory=dict)
    event: dict[str, Any] | None = None  # the one invocation of a cold process
    flags: tuple[str, ...] = ("-I",)
    cwd: str = "/"
    first_party: frozenset[str] = frozenset()


def _apigw(path: str, **headers: str) -> dict[str, Any]:
    return proxy_event(method="GET", path=path, resource=path, headers=headers or None)


def _route_event(path: str) -> dict[str, Any]:
    if path in ("/health/detailed", "/metrics"):
        return _apigw(path, Authorization=f"Bearer {TOKEN}", Accept="application/json")
    return _apigw(path, Accept="application/json")


def _template_specs() -> dict[Path, Any]:
    """Function specs from template.yaml by code folder (best effort: others edit it)."""
    try:
        from tools.runtime.template import functions

        return {spec.package_dir.resolve(): spec for spec in functions().values()}
    except Exception as exc:
        _log(f"template.yaml not read ({exc!r}); using defaults")
        return {}


def _function_event(name: str, spec: Any) -> dict[str, Any]:
    routes = [r.path for r in getattr(spec, "routes", ())]
    if routes:
        return _route_event("/health" if "/health" in routes else routes[0])
    for candidate in sorted((ROOT / "events").glob(f"{name}*sched*.json")) + sorted(
        (ROOT / "events").glob(f"{name}*.json")
    ):
        with contextlib.suppress(ValueError):
            return dict(json.loads(candidate.read_text()))
    return {}


def _base_env(name: str, url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "POWERTOOLS_SERVICE_NAME": SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": "Bench",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "DATABASE_URL": url,
        "METRICS_AUTH_TOKEN": TOKEN,
    }


def build_variants(url: str) -> tuple[list[Variant], dict[str, Path]]:
    """(a), (b), (c), (c') and one variant per `functions/*/app.py`."""
    specs = _template_specs()
    layer = str(LAYER_DIR)
    variants = [
        Variant("a", "(a) bare handler", "bare", env=_base_env("bare", url), event=_apigw("/")),
        Variant(
            "b",
            "(b) Powertools Logger + pg8000.native",
            "minimal",
            env=_base_env("minimal", url),
            event=_apigw("/health"),
        ),
        Variant(
            "c",
            "(c) FastAPI + Mangum + instrumentator",
            "module",
            paths=(str(PEER_DIR),),
            handler="app.handler",
            env=_base_env("peer", url),
            event=_route_event("/health"),
            cwd=str(PEER_DIR),
            first_party=frozenset({"app"}),
        ),
    ]
    code_dirs = {}
    for app_py in sorted((ROOT / "functions").glob("*/app.py")):
        code_dir = app_py.parent
        name = code_dir.name
        spec = specs.get(code_dir.resolve())
        env = {**_base_env(name, url), **(getattr(spec, "environment", None) or {})}
        for key in ("DB_SECRET_ARN", "METRICS_AUTH_TOKEN_SECRET_ARN"):
            env.pop(key, None)  # DATABASE_URL is the path under test
        code_dirs[name] = code_dir
        variants.append(
            Variant(
                name,
                f"{name} function",
                "module",
                paths=(str(code_dir.parent), layer),  # /var/task holds the package
                handler=str(getattr(spec, "handler", None) or f"{name}.app.lambda_handler"),
                env=env,
                event=_function_event(name, spec),
                cwd=str(code_dir.parent),
                first_party=frozenset({name, "ops"}),
            )
        )
    return variants, code_dirs


def nopyc_variants(by_key: dict[str, Variant], deps: Path, tasks: dict[str, Path]) -> list[Variant]:
    """(b), (c) and health laid out by `nopyc_layout`, run with `-I -S -B`."""
    flags = ("-I", "-S", "-B")
    peer, health = str(tasks["peer"]), str(tasks["health"])
    return [
        replace(by_key["b"], paths=(str(deps),), flags=flags),
        replace(by_key["c"], paths=(peer, str(deps)), flags=flags, cwd=peer),
        replace(by_key["health"], paths=(health, str(deps)), flags=flags, cwd=health),
    ]


def peer_lifespan_off(c: Variant) -> Variant:
    """(c'): the peer with `Mangum(app, lifespan="off")`, measured warm only."""
    label = '(c\') same, `Mangum(app, lifespan="off")`'
    return replace(c, key="c_off", label=label, env={**c.env, "PEER_MANGUM_LIFESPAN": "off"})


def health_without_hooks(health: Variant) -> Variant:
    """The health function with its after-invocation hooks removed after import (diagnostic)."""
    return replace(
        health,
        key="health_nohooks",
        label="health without its after-invocation hooks (diagnostic)",
        env={**health.env, "BENCH_STRIP_AFTER_INVOCATION": "1"},
    )


def _cmd(python: Path, v: Variant, role: str, *extra: str) -> list[str]:
    paths = "\x1f".join(v.paths)
    return [str(python), *v.flags, *extra, "-c", CHILD_SRC, role, v.kind, v.handler, paths]


def _marked(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK) :]))
    raise ValueError("no result line")


@dataclass
class ColdSample:
    wall_ms: float
    import_ms: float
    status: Any
    boto3_import: bool
    boto3_invoke: bool
    botocore_modules: int
    rss_import_mb: float
    rss_mb: float
    modules: int


def spawn_cold(python: Path, v: Variant) -> ColdSample | str:
    """One fresh process: spawn -> handler imported (wall), then one invocation."""
    payload = json.dumps({"event": v.event})
    started = time.monotonic()
    try:
        proc = subprocess.run(
            _cmd(python, v, "cold"),
            input=payload,
            capture_output=True,
            text=True,
            env=v.env,
            cwd=v.cwd,
            timeout=120,
        )
        r = _marked(proc.stdout)
    except (ValueError, subprocess.TimeoutExpired) as exc:
        err = (getattr(exc, "stderr", None) or "").strip() or str(exc)
        if "proc" in locals():
            err = proc.stderr.strip() or err
        return err.splitlines()[-1] if err else repr(exc)
    return ColdSample(
        wall_ms=(float(r["ready"]) - started) * 1000.0,
        import_ms=float(r["import_s"]) * 1000.0,
        status=r["status"],
        boto3_import=bool(r["aws_import"][0]),
        boto3_invoke=bool(r["aws_invoke"][0]),
        botocore_modules=int(r["aws_invoke"][1]),
        rss_import_mb=int(r["rss_import_kb"]) / 1024.0,
        rss_mb=int(r["rss_kb"]) / 1024.0,
        modules=int(r["modules"]),
    )


class Worker:
    """A warm container: one process, the handler imported once, timed invocations."""

    def __init__(self, python: Path, v: Variant, logdir: Path) -> None:
        self.variant = v
        self.log_path = logdir / f"{v.key}.log"
        self.err_path = logdir / f"{v.key}.err"
        self.log_path.unlink(missing_ok=True)
        self._err = self.err_path.open("w")
        self.proc = subprocess.Popen(
            _cmd(python, v, "warm"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env={**v.env, "BENCH_LOG": str(self.log_path)},
            cwd=v.cwd,
        )
        self.invocations = 0
        self.hooks_stripped: int | None = self._reply().get("stripped")

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return dict(json.loads(line[len(MARK) :]))
        self._err.flush()
        tail = self.err_path.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{self.variant.key} worker died: {' | '.join(tail)}")

    def _send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        return self._reply()

    def run(self, event: dict[str, Any], n: int) -> tuple[list[float], dict[str, int]]:
        r = self._send({"op": "run", "event": event, "n": n})
        self.invocations += n
        return [ns / 1e6 for ns in r["ns"]], {str(k): int(c) for k, c in r["codes"].items()}

    def profile(self, event: dict[str, Any], n: int, top: int = 40) -> list[list[Any]]:
        """cProfile of n invocations: [function, calls, own ms, cumulative ms] per invocation."""
        r = self._send({"op": "profile", "event": event, "n": n, "top": top})
        self.invocations += n
        return list(r["rows"])

    def rss(self) -> tuple[float, bool]:
        """Peak RSS (MB) and whether boto3 is loaded, after everything this worker ran."""
        r = self._send({"op": "rss"})
        return int(r["rss_kb"]) / 1024.0, bool(r["aws"][0])

    def log_lines(self, log_type: str) -> int:
        """How many of the handler's JSON log lines have `"type": log_type`."""
        if not self.log_path.exists():
            return 0
        needle = f'"type":"{log_type}"'
        return sum(needle in line for line in self.log_path.read_text().splitlines())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._send_quit()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()

    def _send_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------
def rotated(items: Sequence[Any], k: int) -> list[Any]:
    k %= max(len(items), 1)
    return list(items[k:]) + list(items[:k])


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------
def measure_cold(
    python: Path, variants: list[Variant], rounds: int
) -> tuple[dict[str, list[ColdSample]], dict[str, str]]:
    """Fresh processes, variants alternating (rotated order each round), one warm-up round."""
    samples: dict[str, list[ColdSample]] = {v.key: [] for v in variants}
    errors: dict[str, str] = {}
    for r in range(rounds + 1):
        for v in rotated(variants, r):
            s = spawn_cold(python, v)
            if isinstance(s, str):
                errors[v.key] = s
            elif r > 0:  # round 0 writes bytecode caches and fills the page cache
                samples[v.key].append(s)
    return samples, errors


_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


@dataclass
class ImportCosts:
    total_ms: float
    by_package: list[tuple[str, str, float]]  # (top-level, kind, self ms)
    edges: list[tuple[str, str, float]]  # (our module, what it imports, cumulative ms)


def _parse_importtime(stderr: str, root: str) -> list[tuple[str, int, int, str | None]]:
    """The subtree of `root`: (module, self us, cumulative us, parent)."""
    rows = []
    for line in stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    end = max((i for i, row in enumerate(rows) if row[3] == 0 and row[0] == root), default=-1)
    if end < 0:
        return []
    start = end
    while start > 0 and rows[start - 1][3] > 0:
        start -= 1
    out: list[tuple[str, int, int, str | None]] = []
    stack: list[str] = []
    for name, self_us, cum_us, level in reversed(rows[start : end + 1]):
        parent = stack[level - 1] if 0 < level <= len(stack) else None
        stack = [*stack[:level], name]
        out.append((name, self_us, cum_us, parent))
    return out


def measure_importtime(python: Path, v: Variant, runs: int) -> ImportCosts | None:
    parsed = []
    for _ in range(runs):
        proc = subprocess.run(
            _cmd(python, v, "import", "-X", "importtime"),
            capture_output=True,
            text=True,
            env=v.env,
            cwd=v.cwd,
            timeout=120,
        )
        tree = _parse_importtime(proc.stderr, v.handler.rpartition(".")[0])
        if tree:
            parsed.append(tree)
    if not parsed:
        return None
    self_ms: dict[str, list[float]] = {}
    cum_ms: dict[str, list[float]] = {}
    for tree in parsed:
        for name, s, c, _ in tree:
            self_ms.setdefault(name, []).append(s / 1000.0)
            cum_ms.setdefault(name, []).append(c / 1000.0)
    med_self = {k: statistics.median(x) for k, x in self_ms.items()}
    med_cum = {k: statistics.median(x) for k, x in cum_ms.items()}

    def ours(module: str) -> bool:
        return module.split(".")[0] in v.first_party

    packages: Counter[str] = Counter()
    for name, ms in med_self.items():
        packages[name.split(".")[0]] += ms
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    by_package = [
        (top, "ours" if ours(top) else "stdlib" if top in stdlib else "dependency", ms)
        for top, ms in packages.most_common()
    ]
    edges = sorted(
        {
            (parent, name, med_cum[name])
            for name, _, _, parent in parsed[0]
            if parent is not None and ours(parent) and not ours(name)
        },
        key=lambda e: -e[2],
    )
    root = v.handler.rpartition(".")[0]
    return ImportCosts(med_cum.get(root, float("nan")), by_package, edges)


@dataclass
class WarmResult:
    ms: dict[tuple[str, str], list[float]]  # (variant, route) -> latencies
    batch_p50: dict[tuple[str, str], list[float]]
    codes: dict[tuple[str, str], Counter[str]]
    rss_mb: dict[str, float]
    boto3: dict[str, bool]
    log_lines: dict[str, int]
    invocations: dict[str, int]
    profiles: dict[str, list[list[Any]]]  # route -> cProfile rows of the health function
    stripped: dict[str, int | None]  # variant -> after-invocation hooks removed
    timed_invocations: dict[str, int] = field(default_factory=dict)  # when rss_mb was read
    flush_failures: dict[str, int] = field(default_factory=dict)  # `type=metrics_flush` lines


def measure_warm(
    python: Path,
    variants: list[Variant],
    plan: Plan,
    logdir: Path,
    only: dict[str, tuple[str, ...]],
    profile: tuple[str, tuple[str, ...]],
) -> WarmResult:
    """Interleaved batches per route; `only` limits a variant to some routes; then a
    cProfile of `profile` = (variant, routes), after the timed batches."""
    events = {route: _route_event(route) for route in HEALTH_ROUTES}
    workers: list[Worker] = []
    res = WarmResult({}, {}, {}, {}, {}, {}, {}, {}, {})

    def serves(w: Worker, route: str) -> bool:
        return route in only.get(w.variant.key, HEALTH_ROUTES)

    try:
        for v in variants:
            try:
                workers.append(Worker(python, v, logdir))
            except RuntimeError as exc:
                if v.key in REQUIRED_WARM:
                    raise
                _log(f"warm variant {v.key} skipped: {exc}")
        for w in workers:
            for route in HEALTH_ROUTES:
                if serves(w, route):
                    w.run(events[route], plan.warmup)
        for r in range(plan.warm_rounds):
            for i, route in enumerate(HEALTH_ROUTES):
                for w in rotated([w for w in workers if serves(w, route)], r + i):
                    times, codes = w.run(events[route], plan.warm_batch)
                    key = (w.variant.key, route)
                    res.ms.setdefault(key, []).extend(times)
                    res.batch_p50.setdefault(key, []).append(statistics.median(times))
                    res.codes.setdefault(key, Counter()).update(codes)
        for w in workers:  # peak RSS of the timed work, before cProfile's own allocations
            res.rss_mb[w.variant.key], res.boto3[w.variant.key] = w.rss()
            res.timed_invocations[w.variant.key] = w.invocations
        for w in workers:
            if w.variant.key == profile[0]:
                for route in profile[1]:
                    res.profiles[route] = w.profile(events[route], plan.warm_batch * 5)
        for w in workers:
            res.log_lines[w.variant.key] = w.log_lines("request")
            res.flush_failures[w.variant.key] = w.log_lines("metrics_flush")
            res.invocations[w.variant.key] = w.invocations
            res.stripped[w.variant.key] = w.hooks_stripped
    finally:
        for w in workers:
            w.close()
    return res


@dataclass
class ColdRun:
    """Fresh processes of some variants: samples by variant key, and why any failed."""

    variants: list[Variant]
    samples: dict[str, list[ColdSample]]
    errors: dict[str, str]

    def of(self, key: str) -> list[ColdSample]:
        return self.samples.get(key, [])


@dataclass
class WarmRun:
    """Warm workers: the variants in the order they were started, and what they measured."""

    variants: list[Variant]
    no_hooks: str  # key of the health variant without its after-invocation hooks
    result: WarmResult


def cold_start(python: Path, plan: Plan, variants: list[Variant]) -> ColdRun:
    """Every variant as a fresh process, with the .pyc the interpreter writes."""
    _log(f"cold start: {plan.cold_rounds} rounds x {len(variants)} variants")
    return ColdRun(variants, *measure_cold(python, variants, plan.cold_rounds))


def cold_start_without_pyc(
    python: Path, plan: Plan, by_key: dict[str, Variant], code_dirs: dict[str, Path]
) -> ColdRun:
    """(b), (c) and health from copies without any .pyc, as `sam build` ships them."""
    _log("cold start without .pyc (as the layer is built)")
    deps, tasks = nopyc_layout(python, {"health": code_dirs["health"], "peer": PEER_DIR})
    variants = nopyc_variants(by_key, deps, tasks)
    return ColdRun(variants, *measure_cold(python, variants, plan.nopyc_rounds))


def import_costs(
    python: Path, plan: Plan, by_key: dict[str, Variant]
) -> tuple[ImportCosts | None, ImportCosts | None]:
    """`-X importtime` of the health handler and of the peer's."""
    _log("python -X importtime of the health handler")
    return (
        measure_importtime(python, by_key["health"], plan.importtime_runs),
        measure_importtime(python, by_key["c"], plan.importtime_runs),
    )


def warm_latency(python: Path, plan: Plan, by_key: dict[str, Variant]) -> WarmRun:
    """(a), (b), health, (c) and two diagnostic variants as warm containers, interleaved."""
    _log(f"warm latency: {plan.warm_rounds} rounds x {plan.warm_batch} per route")
    health, no_hooks = by_key["health"], health_without_hooks(by_key["health"])
    c_off = peer_lifespan_off(by_key["c"])
    variants = [by_key["a"], by_key["b"], health, no_hooks, by_key["c"], c_off]
    result = measure_warm(
        python,
        variants,
        plan,
        WORK,
        only={"b": ("/health",), no_hooks.key: ("/health/live", "/health")},
        profile=("health", ("/health/live", "/health")),
    )
    return WarmRun(variants, no_hooks.key, result)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def _code_under_test() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.rstrip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=all", "--", "functions", "layers")
    changed = [line[3:] for line in dirty.splitlines() if line.endswith(".py")]
    if not changed:
        return f"`{head}` (the Python code of functions/ and layers/ as committed)"
    shown = ", ".join(f"`{c}`" for c in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    return f"`{head}` plus uncommitted changes to {len(changed)} Python files: {shown}{more}"


# Harness frames, and the stdlib logging chain under `log_request` (its total is that row).
_PROFILE_NOISE = ("<string>", "cProfile", "_lsprof", "disable' of", "logging/__init__.py")


def _profile_rows(
    rows: list[list[Any]], top: int = 12
) -> list[tuple[str, float, float, float, float]]:
    """(function, calls, own ms, cumulative ms, share of the handler's total)."""
    kept = [r for r in rows if not any(n in str(r[0]) for n in _PROFILE_NOISE)]
    total = float(kept[0][3]) if kept else float("nan")
    return [
        (str(name).replace("|", "\\|"), round(float(calls), 2), own, cum, cum / total)
        for name, calls, own, cum in kept[:top]
    ]


def _med(samples: list[ColdSample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples) if samples else float("nan")


def _paired_ratio(a: list[ColdSample], b: list[ColdSample], attr: str = "wall_ms") -> list[float]:
    return [getattr(x, attr) / getattr(y, attr) for x, y in zip(a, b, strict=False)]


def _cold_rows(
    cold: ColdRun, blank_cells: int, row: Callable[[Variant, list[ColdSample]], str]
) -> list[str]:
    """One table row a variant; one left without samples shows why in its second cell."""
    return [
        row(v, s)
        if (s := cold.of(v.key))
        else f"| {v.label} | error: {cold.errors.get(v.key, 'no samples')} |" + "|" * blank_cells
        for v in cold.variants
    ]


def intro(code_under_test: str) -> list[str]:
    return [
        "## Health function vs baselines (issue 2)",
        "",
        "Code under test: " + code_under_test + ".",
        "",
        "Compared in the same run: **(a)** a bare handler returning constant JSON; "
        "**(b)** a process importing only Powertools `Logger` and `pg8000.native` (and "
        "creating the Logger); **(c)** the health routes written the way many teams "
        "would, FastAPI + Mangum + prometheus-fastapi-instrumentator "
        "(`benchmarks/peer_fastapi/app.py`, `handler = Mangum(app)`, same routes, "
        "shapes and pg8000 check, `/metrics` from the instrumentator); **(c')** the "
        'same with `lifespan="off"` (warm only, for reference); and every function in '
        "`functions/` with its folder and `layers/ops` on `sys.path`, as Lambda lays out "
        "`/var/task` and `/opt/python`. Database: a throwaway PostgreSQL on 127.0.0.1 "
        "(migrations applied), `DATABASE_URL` set, a bearer token configured.",
        "",
    ]


def _largest_memory(cold: ColdRun, code_dirs: dict[str, Path]) -> tuple[str, float, int]:
    """(function, median peak RSS MB) of the function using the most, and how many were measured."""
    mems = {k: _med(cold.of(k), "rss_mb") for k in code_dirs if cold.of(k)}
    worst = max(mems, key=lambda k: mems[k], default="")
    return worst, mems.get(worst, float("nan")), len(mems)


def targets_table(cold: ColdRun, warm: WarmResult, code_dirs: dict[str, Path]) -> list[str]:
    """The targets of issue 2, each a ratio or difference against a baseline of this run."""
    hc, b, c = cold.of("health"), cold.of("b"), cold.of("c")
    r_b = _med(hc, "wall_ms") / _med(b, "wall_ms") if hc and b else float("nan")
    r_c = _med(hc, "wall_ms") / _med(c, "wall_ms") if hc and c else float("nan")
    boto_import = sum(s.boto3_import for s in hc)
    boto_invoke = sum(s.boto3_invoke for s in hc)
    health_status = Counter(str(s.status) for s in hc)
    live_a = pct(warm.ms[("a", "/health/live")], 50)
    live_h = pct(warm.ms[("health", "/health/live")], 50)
    h_h = pct(warm.ms[("health", "/health")], 50)
    h_c = pct(warm.ms[("c", "/health")], 50)
    d_h = pct(warm.ms[("health", "/health/detailed")], 50)
    d_c = pct(warm.ms[("c", "/health/detailed")], 50)
    detailed_codes = warm.codes.get(("health", "/health/detailed"), Counter())
    worst, worst_mem, measured = _largest_memory(cold, code_dirs)
    health_codes = warm.codes.get(("health", "/health"), Counter())
    db_ok = set(health_codes) == {"200"} and set(health_status) == {"200"}
    no_boto3 = bool(hc) and boto_import == 0 and boto_invoke == 0 and not warm.boto3.get("health")
    mem_ok = worst_mem <= MEMORY_LIMIT_MB and measured == len(code_dirs)
    lines = [
        "### Targets",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
        f"| health cold import ≤ 1.5x (b) | {r_b:.2f}x | 1.5x | {verdict(r_b <= 1.5)} |",
        f"| health cold import ≤ 0.5x (c) | {r_c:.2f}x | 0.5x | {verdict(r_c <= 0.5)} |",
        f"| no boto3 with `DATABASE_URL` (after import / after `/health`) | "
        f"{boto_import}/{len(hc)} and {boto_invoke}/{len(hc)} processes loaded it, "
        f"warm worker: {'yes' if warm.boto3.get('health') else 'no'} | 0 | "
        f"{verdict(no_boto3)} |",
        f"| `/health/live` p50 within 0.3 ms of (a) | +{live_h - live_a:.3f} ms "
        f"({live_h:.3f} vs {live_a:.3f}) | +0.300 ms | {verdict(live_h - live_a <= 0.3)} |",
        f"| `/health` p50 ≤ 0.6x (c) | {h_h / h_c:.2f}x ({h_h:.3f} vs {h_c:.3f} ms) | 0.6x | "
        f"{verdict(h_h / h_c <= 0.6 and db_ok)} |",
        f"| `/health/detailed` p50 ≤ 0.6x (c) | {d_h / d_c:.2f}x ({d_h:.3f} vs {d_c:.3f} ms) "
        f"| 0.6x | {verdict(d_h / d_c <= 0.6 and set(detailed_codes) == {'200'})} |",
        f"| every function's peak memory well under 128 MB | {worst_mem:.1f} MB ({worst}, "
        f"the largest; {measured}/{len(code_dirs)} functions measured) | "
        f"{MEMORY_LIMIT_MB:.0f} MB | {verdict(mem_ok)} |",
        "",
    ]
    if not db_ok:
        lines += [
            f"⚠ `/health` did not always answer 200 (cold: {dict(health_status)}, "
            f"warm: {dict(health_codes)}): the latency numbers are not a database check.",
            "",
        ]
    return lines


def cold_table(plan: Plan, cold: ColdRun) -> list[str]:
    b, c = cold.of("b"), cold.of("c")

    def row(v: Variant, s: list[ColdSample]) -> str:
        wall = [x.wall_ms for x in s]
        vs_b = _paired_ratio(s, b)
        boto = "yes" if any(x.boto3_import or x.boto3_invoke for x in s) else "no"
        boto += f" / {max(x.botocore_modules for x in s)}"
        statuses = ", ".join(sorted({str(x.status) for x in s}))
        return (
            f"| {v.label} | {statistics.median(wall):.1f} ({iqr(wall)}) | "
            f"{_med(s, 'import_ms'):.1f} | {statistics.median(vs_b):.2f}x ({iqr(vs_b)}) | "
            f"{_med(s, 'wall_ms') / _med(c, 'wall_ms'):.2f}x | {_med(s, 'rss_mb'):.1f} "
            f"({_med(s, 'rss_import_mb'):.1f}) | {s[0].modules} | {boto} | {statuses} |"
        )

    return [
        "### Cold-start proxy and peak memory",
        "",
        f"Fresh processes (`python -I`), {plan.cold_rounds} rounds, all variants alternating "
        "in a rotated order each round after one discarded warm-up round. *spawn→ready*: "
        "from just before the spawn to the handler being imported (interpreter start "
        "included; the target ratios use it); *import*: the import alone, timed inside "
        "the process. Ratio spread: IQR of the per-round ratios. Peak RSS: the process's "
        "high-water mark (`VmHWM`; `ru_maxrss` is unusable here because Linux carries the "
        "spawning parent's peak across `exec`) after the import and one invocation "
        "(`/health` for (b), (c) and health, the function's own route or scheduled event "
        "otherwise; an invocation that raises is shown in *status*). *botocore modules*: "
        "Powertools imports the bare `botocore` package (<1 ms) to register its user "
        "agent; boto3 is the 200 ms import the target is about.",
        "",
        "| process | spawn→ready ms (IQR) | import ms | vs (b) (IQR) | vs (c) | "
        "peak RSS MB (after import) | modules | boto3 / botocore modules | status |",
        "|---|---|---|---|---|---|---|---|---|",
        *_cold_rows(cold, 7, row),
    ]


def nopyc_table(plan: Plan, cold: ColdRun, nopyc: ColdRun) -> list[str]:
    hn, bn, cn = nopyc.of("health"), nopyc.of("b"), nopyc.of("c")
    lines = [
        "",
        "Without `.pyc` (how Lambda would run a build that ships no bytecode: `/opt` and "
        "`/var/task` are read-only, so every cold start compiles every dependency and our "
        "code. `make build` therefore compiles the artifacts with a python3.13 when the "
        "machine has one; the stdlib keeps its `.pyc` as in the runtime image; "
        "`python -I -S -B`, "
        f"{plan.nopyc_rounds} rounds, (c) packaged the same way):",
        "",
        "| process | spawn→ready ms | import ms | vs (b) | vs (c) | peak RSS MB |",
        "|---|---|---|---|---|---|",
        *_cold_rows(
            nopyc,
            4,
            lambda v, s: (
                f"| {v.label} | {_med(s, 'wall_ms'):.1f} | {_med(s, 'import_ms'):.1f} | "
                f"{_med(s, 'wall_ms') / _med(bn, 'wall_ms'):.2f}x | "
                f"{_med(s, 'wall_ms') / _med(cn, 'wall_ms'):.2f}x | {_med(s, 'rss_mb'):.1f} |"
            ),
        ),
    ]
    if hn and bn and cn:
        hc, b, c = cold.of("health"), cold.of("b"), cold.of("c")
        lines += [
            "",
            f"With `.pyc` → without: health {_med(hc, 'wall_ms'):.0f} → "
            f"{_med(hn, 'wall_ms'):.0f} ms, (b) {_med(b, 'wall_ms'):.0f} → "
            f"{_med(bn, 'wall_ms'):.0f} ms, (c) {_med(c, 'wall_ms'):.0f} → "
            f"{_med(cn, 'wall_ms'):.0f} ms.",
        ]
    return lines


def import_table(plan: Plan, costs: ImportCosts | None, peer: ImportCosts | None) -> list[str]:
    if costs is None:
        return []
    return [
        "",
        f"### What the health import costs (`python -X importtime`, median of "
        f"{plan.importtime_runs} runs)",
        "",
        f"`import app` (health): {costs.total_ms:.1f} ms cumulative"
        + (f"; the peer's `import app`: {peer.total_ms:.1f} ms." if peer is not None else "."),
        "",
        "| imported by our code | module | cumulative ms |",
        "|---|---|---|",
        *(f"| `{p}` | `{m}` | {ms:.1f} |" for p, m, ms in costs.edges[:12]),
        "",
        "| package (self time summed over its modules) | kind | ms |",
        "|---|---|---|",
        *(f"| `{top}` | {kind} | {ms:.1f} |" for top, kind, ms in costs.by_package[:14]),
    ]


def _warm_row(warm: WarmResult, route: str) -> str:
    def cell(key: str) -> str:
        xs = warm.ms.get((key, route), [])
        return f"{pct(xs, 50):.3f} / {pct(xs, 99):.3f}" if xs else "-"

    hb = warm.batch_p50[("health", route)]
    ab = warm.batch_p50[("a", route)]
    cb = warm.batch_p50[("c", route)]
    d = [x - y for x, y in zip(hb, ab, strict=False)]
    q = [x / y for x, y in zip(hb, cb, strict=False)]
    hp = pct(warm.ms[("health", route)], 50)
    codes_h = dict(warm.codes.get(("health", route), {}))
    codes_c = dict(warm.codes.get(("c", route), {}))
    return (
        f"| `{route}` | {cell('a')} | {cell('b')} | {cell('health')} | {cell('c')} | "
        f"{cell('c_off')} | "
        f"+{hp - pct(warm.ms[('a', route)], 50):.3f} ({iqr(d)}) | "
        f"{hp / pct(warm.ms[('c', route)], 50):.2f}x ({iqr(q)}) | {codes_h} {codes_c} |"
    )


def warm_table(plan: Plan, run: WarmRun) -> list[str]:
    warm = run.result
    total = plan.warm_rounds * plan.warm_batch
    lines = [
        "",
        "### Warm latency (in-process invocations)",
        "",
        f"One long-lived process per variant (a warm container), {plan.warmup} discarded "
        f"invocations per route, then {plan.warm_rounds} rounds x {plan.warm_batch} "
        f"invocations per route and variant ({total} samples each), variants alternating "
        "per batch. Each invocation gets its own API Gateway REST proxy event (fresh "
        "request id) and context, built outside the timed call; (c) is invoked through "
        "Mangum with the same event. Timed: the handler call only (for health that "
        "includes the database round trip, the check thread, the request log line and "
        "any after-invocation hooks). Logs go to a file. ms; *Δ/(a)*: p50 minus (a)'s "
        "p50; *÷(c)*: p50 over (c)'s p50 (IQR of per-batch values).",
        "",
        "(b) serves `/health` only: Powertools Logger line + `SELECT 1` on a reused pg8000 "
        "connection, the floor for a database health check.",
        "",
        "| route | (a) p50 / p99 | (b) p50 / p99 | health p50 / p99 | (c) p50 / p99 | "
        "(c') p50 / p99 | health Δ/(a) p50 | health ÷(c) p50 | statuses (health, c) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_warm_row(warm, route) for route in HEALTH_ROUTES),
        "",
        "Warm processes after all their invocations: "
        + ", ".join(
            f"{v.label} {warm.rss_mb[v.key]:.1f} MB peak RSS after "
            f"{warm.timed_invocations[v.key]} invocations"
            for v in run.variants
            if v.key in warm.rss_mb
        )
        + f". Health request log lines (`type=request`): {warm.log_lines.get('health', 0)} "
        f"for {warm.invocations.get('health', 0)} invocations; metrics flush failures "
        f"logged (`type=metrics_flush`): {warm.flush_failures.get('health', 0)}.",
        "",
    ]
    if warm.flush_failures.get("health"):
        lines += [
            "⚠ The health function logged metrics flush failures: its timings include "
            "failed flushes, not only working ones (see `benchmarks/.work/health/health.log`).",
            "",
        ]
    return lines


def hooks_table(run: WarmRun) -> list[str]:
    stripped = run.result.stripped.get(run.no_hooks)
    if not stripped:
        return []
    lines = [
        f"What the health function's after-invocation hooks cost ({stripped} hook(s) of "
        "`ops.api.Api.after_invocation`, i.e. the metrics flush: the same handler in "
        "another warm process with those hooks removed after import, interleaved with "
        "the others):",
        "",
        "| route | health p50 / p99 | without the hooks p50 / p99 | hooks' p50 cost |",
        "|---|---|---|---|",
    ]
    for route in ("/health/live", "/health"):
        with_h, without = run.result.ms[("health", route)], run.result.ms[(run.no_hooks, route)]
        lines.append(
            f"| `{route}` | {pct(with_h, 50):.3f} / {pct(with_h, 99):.3f} | "
            f"{pct(without, 50):.3f} / {pct(without, 99):.3f} | "
            f"+{pct(with_h, 50) - pct(without, 50):.3f} ms |"
        )
    return [*lines, ""]


def profile_tables(plan: Plan, warm: WarmResult) -> list[str]:
    lines: list[str] = []
    for route, rows in warm.profiles.items():
        lines += [
            f"Where the health function's `{route}` time goes (cProfile of "
            f"{plan.warm_batch * 5} invocations in the warm process, per invocation; "
            "profiling inflates Python-level calls, so read shares, not absolute times; "
            "the database check and the metrics flush run on worker threads: the request "
            "thread's wait for them shows as a lock's `acquire`, and rows of a worker thread "
            "may appear too):",
            "",
            "| function | calls | own ms | cumulative ms | share |",
            "|---|---|---|---|---|",
            *(
                f"| `{name}` | {calls:g} | {own:.3f} | {cum:.3f} | {share:.0%} |"
                for name, calls, own, cum, share in _profile_rows(rows)
            ),
            "",
        ]
    return lines


def method_notes(quick: bool, load: tuple[float, float], elapsed: float) -> list[str]:
    return [
        "### Method notes",
        "",
        f"- Same interpreter for every process: `.venv-bench` ({sys.version.split()[0]} base), "
        "built from `benchmarks/requirements.txt`. No timing assertions anywhere; targets "
        "are ratios or differences against baselines measured in this run.",
        f"- Machine load (1-min average) {load[0]:.2f} before, {load[1]:.2f} after; "
        f"{os.cpu_count()} CPUs; suite time {elapsed:.0f} s"
        f"{' (--quick: fewer rounds, wider spread)' if quick else ''}.",
        "- Reproduce: `make bench SUITES=health` (or `.venv/bin/python -m benchmarks health "
        "[--quick]`).",
    ]


def run(quick: bool) -> str:
    plan = QUICK if quick else FULL
    began, load_before = time.monotonic(), os.getloadavg()[0]
    code_under_test = _code_under_test()  # before the run: others may commit meanwhile
    python = bench_python()
    WORK.mkdir(parents=True, exist_ok=True)
    with database() as url:
        variants, code_dirs = build_variants(url)
        by_key = {v.key: v for v in variants}
        if "health" not in by_key:
            return "## Health function vs baselines\n\n`functions/health/app.py` not found."
        cold = cold_start(python, plan, variants)
        nopyc = cold_start_without_pyc(python, plan, by_key, code_dirs)
        costs, peer_costs = import_costs(python, plan, by_key)
        warm = warm_latency(python, plan, by_key)
    elapsed, load_after = time.monotonic() - began, os.getloadavg()[0]
    lines = [
        *intro(code_under_test),
        *targets_table(cold, warm.result, code_dirs),
        *cold_table(plan, cold),
        *nopyc_table(plan, cold, nopyc),
        *import_table(plan, costs, peer_costs),
        *warm_table(plan, warm),
        *hooks_table(warm),
        *profile_tables(plan, warm.result),
        *method_notes(quick, (load_before, load_after), elapsed),
    ]
    return "\n".join(lines)
