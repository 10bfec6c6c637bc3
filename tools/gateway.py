"""A local API Gateway on 127.0.0.1: routes from template.yaml, real handlers behind it.

Each function runs in its own worker process (a warm "container"), one request at
a time, like Lambda. A handler that exceeds the function's Timeout is killed and
the caller gets API Gateway's 504.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tools import ROOT
from tools.apigw import proxy_event
from tools.runtime import FunctionSpec, functions


class Worker:
    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.spec = spec
        self.env = env
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, **self.spec.environment, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["AWS_LAMBDA_FUNCTION_NAME"] = self.spec.logical_id
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.worker",
                str(self.spec.code_dir),
                self.spec.handler,
                self.spec.logical_id,
                str(self.spec.memory_mb),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(
                json.dumps({"event": event, "timeout_s": self.spec.timeout_s}) + "\n"
            )
            self.proc.stdin.flush()
            # Import time counts against the first invocation, as a cold start does on Lambda.
            ready, _, _ = select.select([self.proc.stdout], [], [], self.spec.timeout_s + 5)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.stop()
                return {"ok": False, "timeout": bool(not ready), "errorMessage": "worker died"}
            return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class Gateway:
    def __init__(self, env: dict[str, str] | None = None, stage: str = "local") -> None:
        self.stage = stage
        self.workers: dict[str, Worker] = {}
        self.routes: dict[str, dict[str, Worker]] = {}
        for spec in functions().values():
            worker = Worker(spec, env or {})
            self.workers[spec.logical_id] = worker
            for route in spec.routes:
                self.routes.setdefault(route.path, {})[route.method] = worker

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        methods = self.routes.get(parts.path)
        if methods is None:
            return _json(404, {"error": "not_found", "message": f"no route for {parts.path}"})
        worker = methods.get(method) or methods.get("ANY")
        if worker is None:
            # API Gateway would answer 403 here; the handler's JSON 405 is more useful,
            # so hand the request to the route's function and let it say which methods work.
            worker = next(iter(methods.values()))
        event = proxy_event(
            method=method,
            path=parts.path,
            resource=parts.path,
            query=parts.query,
            headers=headers,
            body=body,
            stage=self.stage,
        )
        reply = worker.invoke(event)
        if not reply.get("ok"):
            if reply.get("timeout"):
                return _json(504, {"message": "Endpoint request timed out"})
            print(json.dumps({"type": "gateway", **reply}), file=sys.stderr)
            return _json(502, {"message": "Internal server error"})
        result = reply["result"]
        try:
            status = int(result["statusCode"])
            out_headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
            payload = result.get("body") or ""
            data = (
                base64.b64decode(payload)
                if result.get("isBase64Encoded")
                else str(payload).encode()
            )
        except (KeyError, TypeError, ValueError):
            return _json(502, {"message": "Internal server error"})
        return status, out_headers, data

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()


def _json(status: int, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def make_server(gateway: Gateway, host: str = "127.0.0.1", port: int = 3000) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, data = gateway.handle(
                self.command, self.path, {k: v for k, v in self.headers.items()}, body
            )
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        def log_message(self, fmt: str, *args: Any) -> None:  # the handlers log each request
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
