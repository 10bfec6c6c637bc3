"""What the health suite's Lambda processes are: the variants
(a bare handler, Powertools Logger + pg8000.native, the FastAPI peer, and every function
of template.yaml laid out as Lambda lays it out), the interpreter they all run
(`.venv-bench`, from benchmarks/requirements.txt) and the database they reach (the tests'
`tools.localdb.pgcluster.running_cluster` and `tests.support.metrics.metrics_database`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.lambda_procs import WORK, Variant, log
from tests.support.metrics import metrics_database
from tools import LAYER_DIR, ROOT
from tools.localdb.pgcluster import running_cluster
from tools.runtime.apigw import proxy_event
from tools.runtime.template import FunctionSpec, functions

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer_fastapi"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
VENV = ROOT / ".venv-bench"
TOKEN = "bench-token"


def bench_python() -> Path:
    """`.venv-bench`'s interpreter, created or updated when the requirements changed."""
    python = VENV / "bin" / "python"
    reqs = REQUIREMENTS.read_bytes() + (LAYER_DIR / "requirements.txt").read_bytes()
    digest, stamp = hashlib.sha256(reqs).hexdigest(), VENV / ".installed"
    WORK.mkdir(parents=True, exist_ok=True)
    with (WORK / "venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two suites started at once install it once
        if stamp.exists() and stamp.read_text().strip() == digest and python.exists():
            return python
        log(f"installing {REQUIREMENTS.relative_to(ROOT)} into {VENV.name} (once)")
        if not python.exists():
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True, cwd=BENCH_DIR)
        stamp.write_text(digest + "\n")
    return python


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 with the bundle's migrations: the tests' own."""
    with running_cluster() as cluster:
        yield metrics_database(cluster, "bench")


def code_under_test() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = git("status", "--porcelain", "--", "functions", "layers").strip()
    changes = "plus uncommitted changes" if dirty else "as committed"
    return f"`{head}` (the Python code of functions/ and layers/ {changes})"


def apigw_event(path: str, **headers: str) -> dict[str, Any]:
    return proxy_event(method="GET", path=path, resource=path, headers=headers or None)


def route_event(path: str) -> dict[str, Any]:
    """A GET of `path`, with the bearer token on the routes that need one."""
    if path in ("/health/detailed", "/metrics"):
        return apigw_event(path, Authorization=f"Bearer {TOKEN}", Accept="application/json")
    return apigw_event(path, Accept="application/json")


def _function_event(name: str, spec: FunctionSpec) -> dict[str, Any]:
    routes = [r.path for r in spec.routes]
    if routes:
        return route_event("/health" if "/health" in routes else routes[0])
    events = sorted((ROOT / "events").glob(f"{name}*sched*.json"))
    return dict(json.loads(events[0].read_text())) if events else {}


def _env(name: str, url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "POWERTOOLS_SERVICE_NAME": "realestate-backend",
        "POWERTOOLS_METRICS_NAMESPACE": "Bench",
        "DATABASE_URL": url,
        "METRICS_AUTH_TOKEN": TOKEN,
    }


def build_variants(url: str) -> dict[str, Variant]:
    """(a) a bare handler, (b) Powertools Logger + pg8000.native, (c) the FastAPI peer, and
    every function of template.yaml, by key (a function's key: its name, e.g. `health`)."""
    variants = [
        Variant("a", "(a) bare handler", "bare", env=_env("bare", url), event=apigw_event("/")),
        Variant(
            "b",
            "(b) Powertools Logger + pg8000.native",
            "minimal",
            env=_env("minimal", url),
            event=apigw_event("/health"),
        ),
        Variant(
            "c",
            "(c) FastAPI + Mangum + instrumentator",
            "module",
            paths=(str(PEER_DIR),),
            handler="app.handler",
            env=_env("peer", url),
            event=route_event("/health"),
            cwd=str(PEER_DIR),
        ),
    ]
    for spec in sorted(functions().values(), key=lambda s: s.handler):
        name = spec.package
        env = {**_env(name, url), **spec.environment}
        for key in ("DB_SECRET_ARN", "METRICS_AUTH_TOKEN_SECRET_ARN"):
            env.pop(key, None)  # DATABASE_URL is the path under test
        paths = (str(spec.code_dir), str(LAYER_DIR))
        event = _function_event(name, spec)
        variants.append(
            Variant(name, f"{name} function", "module", paths, spec.handler, env, event, paths[0])
        )
    return {v.key: v for v in variants}
