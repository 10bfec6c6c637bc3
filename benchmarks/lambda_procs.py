"""The benchmarks' Lambda processes: fresh ones (a cold start) and long-lived ones (a warm
container), each importing a handler from the folders Lambda would put on sys.path (its
code, then the layer). Used by the health suite; what it runs is in
benchmarks.lambda_variants.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / ".work"  # git-ignored scratch space
MARK = "@@bench@@"


@dataclass(frozen=True)
class Plan:
    cold_rounds: int
    warm_rounds: int
    warm_batch: int
    warmup: int


QUICK = Plan(cold_rounds=12, warm_rounds=8, warm_batch=40, warmup=40)
FULL = Plan(cold_rounds=30, warm_rounds=20, warm_batch=100, warmup=150)

# Run as `python -I -c CHILD_SRC ROLE KIND HANDLER PATHS`, the child does nothing before the
# timed import but read argv (sys and time are built in), so every variant's import is
# measured from the same starting point. `cold`: import, then one invocation with the event
# read from stdin, and one marked JSON line of results. `warm`: import, then serve `run`
# commands (stdin) with timed in-process invocations; the handler's own stdout (its logs)
# goes to a file, the replies to the original stdout.
CHILD_SRC = r"""
import sys, time
_t0 = time.perf_counter()
_role, _kind, _spec, _paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path[0:0] = [p for p in _paths.split("\x1f") if p]
if _kind == "bare":
    def handler(event, context):
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                "body": '{"status":"ok"}'}
elif _kind == "minimal":
    from aws_lambda_powertools import Logger
    import pg8000.native
    _logger, _conn = Logger(), None

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
    __import__(_mod)
    handler = getattr(sys.modules[_mod], _attr)
_ready, _import_s = time.monotonic(), time.perf_counter() - _t0
import json, os, uuid


def _loaded():
    # [boto3, botocore modules, prometheus_client]. Powertools imports the bare `botocore`
    # package (under 1 ms) to register its user agent; clients and sessions are what cost.
    return ["boto3" in sys.modules, sum(m.split(".")[0] == "botocore" for m in sys.modules),
            "prometheus_client" in sys.modules]


def _peak_kb():
    # VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the spawning parent's peak across exec.
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))


class _Ctx:
    def __init__(self, name):
        self.function_name, self.function_version = name, "$LATEST"
        self.invoked_function_arn = "arn:aws:lambda:local:000000000000:function:" + name
        self.memory_limit_in_mb, self.aws_request_id = 128, str(uuid.uuid4())
        self.log_group_name, self.log_stream_name = "/aws/lambda/" + name, "bench"
        self._deadline = time.monotonic() + 10

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _fresh(template):
    event = json.loads(template)
    ctx = event.get("requestContext") if isinstance(event, dict) else None
    if isinstance(ctx, dict):
        ctx["requestId"] = ctx["extendedRequestId"] = str(uuid.uuid4())
    return event


_NAME, _out = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "bench"), sys.stdout
if _role == "cold":
    _at_import, _rss_import = _loaded(), _peak_kb()
    _req, _status = json.loads(sys.stdin.read()), None
    if _req.get("event") is not None:
        try:
            _resp = handler(_fresh(json.dumps(_req["event"])), _Ctx(_NAME))
            _status = _resp.get("statusCode", "returned") if isinstance(_resp, dict) else "returned"
        except Exception as exc:
            _status = "raised " + type(exc).__name__ + ": " + str(exc)[:120]
    _out.write(MARK + json.dumps({
        "ready": _ready, "import_s": _import_s, "status": _status, "at_import": _at_import,
        "after": _loaded(), "modules": len(sys.modules), "rss_import_kb": _rss_import,
        "rss_kb": _peak_kb()}) + "\n")
    _out.flush()
else:
    _proto = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(os.open(os.environ["BENCH_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 1)
    _proto.write(MARK + "{}\n")
    for _line in sys.stdin:
        _cmd = json.loads(_line)
        if _cmd["op"] == "quit":
            break
        if _cmd["op"] == "rss":
            _proto.write(MARK + json.dumps({"rss_kb": _peak_kb(), "loaded": _loaded()}) + "\n")
            continue
        _template = json.dumps(_cmd["event"])
        _work = [(_fresh(_template), _Ctx(_NAME)) for _ in range(_cmd["n"])]
        _ns, _codes, _clock = [], {}, time.perf_counter_ns
        for _event, _ctx in _work:
            _s = _clock()
            _resp = handler(_event, _ctx)
            _ns.append(_clock() - _s)
            _codes[str(_resp.get("statusCode"))] = _codes.get(str(_resp.get("statusCode")), 0) + 1
        sys.stdout.flush()
        _proto.write(MARK + json.dumps({"ns": _ns, "codes": _codes}) + "\n")
""".replace("MARK", repr(MARK))


def log(msg: str) -> None:
    print(f"   [bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # bare | minimal | module
    paths: tuple[str, ...] = ()
    handler: str = "app.lambda_handler"
    env: dict[str, str] = field(default_factory=dict)
    event: dict[str, Any] | None = None  # the one invocation of a cold process
    cwd: str = "/"


def _cmd(python: Path, v: Variant, role: str) -> list[str]:
    return [str(python), "-I", "-c", CHILD_SRC, role, v.kind, v.handler, "\x1f".join(v.paths)]


def _marked(text: str) -> dict[str, Any]:
    line = next(x for x in reversed(text.splitlines()) if x.startswith(MARK))
    return dict(json.loads(line[len(MARK) :]))


@dataclass
class ColdSample:
    wall_ms: float  # spawn -> handler imported
    import_ms: float  # the import alone, timed inside the process
    status: Any
    boto3: bool  # loaded after the import or after the invocation
    botocore_modules: int
    prometheus_client: bool
    rss_import_mb: float
    rss_mb: float
    modules: int


def spawn_cold(python: Path, v: Variant) -> ColdSample | str:
    """One fresh process: spawn -> handler imported (wall), then one invocation; or why not."""
    started = time.monotonic()
    proc = subprocess.run(
        _cmd(python, v, "cold"),
        input=json.dumps({"event": v.event}),
        capture_output=True,
        text=True,
        env=v.env,
        cwd=v.cwd,
        timeout=120,
    )
    try:
        r = _marked(proc.stdout)
    except StopIteration:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return ColdSample(
        wall_ms=(float(r["ready"]) - started) * 1000.0,
        import_ms=float(r["import_s"]) * 1000.0,
        status=r["status"],
        boto3=bool(r["at_import"][0] or r["after"][0]),
        botocore_modules=int(r["after"][1]),
        prometheus_client=bool(r["after"][2]),
        rss_import_mb=int(r["rss_import_kb"]) / 1024.0,
        rss_mb=int(r["rss_kb"]) / 1024.0,
        modules=int(r["modules"]),
    )


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    k %= max(len(items), 1)
    return list(items[k:]) + list(items[:k])


def measure_cold(
    python: Path, variants: list[Variant], rounds: int
) -> tuple[dict[str, list[ColdSample]], dict[str, str]]:
    """Fresh processes, variants alternating (rotated order each round) after one discarded
    round (it writes bytecode caches and fills the page cache); and why any failed."""
    samples: dict[str, list[ColdSample]] = {v.key: [] for v in variants}
    errors: dict[str, str] = {}
    for r in range(rounds + 1):
        for v in rotated(variants, r):
            s = spawn_cold(python, v)
            if isinstance(s, str):
                errors[v.key] = s
            elif r > 0:
                samples[v.key].append(s)
    return samples, errors


def median_of(samples: list[ColdSample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples) if samples else float("nan")


class Worker:
    """A warm container: one process, the handler imported once, timed invocations."""

    def __init__(self, python: Path, v: Variant, logdir: Path) -> None:
        self.variant, self.invocations = v, 0
        self.log_path, self.err_path = logdir / f"{v.key}.log", logdir / f"{v.key}.err"
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
        self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return dict(json.loads(line[len(MARK) :]))
        self._err.flush()
        tail = self.err_path.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{self.variant.key} worker died: {' | '.join(tail)}")

    def _send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def run(self, event: dict[str, Any], n: int) -> tuple[list[float], dict[str, int]]:
        """n timed invocations of `event` (each with a fresh request id): ms, status counts."""
        r = self._send({"op": "run", "event": event, "n": n})
        self.invocations += n
        return [ns / 1e6 for ns in r["ns"]], {str(k): int(c) for k, c in r["codes"].items()}

    def rss(self) -> tuple[float, bool]:
        """Peak RSS (MB) and whether boto3 is loaded, after everything this worker ran."""
        r = self._send({"op": "rss"})
        return int(r["rss_kb"]) / 1024.0, bool(r["loaded"][0])

    def log_lines(self, log_type: str) -> int:
        """How many of the handler's JSON log lines have `"type": log_type`."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text().count(f'"type":"{log_type}"')

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
