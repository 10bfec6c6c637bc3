"""A real Prometheus (Debian's `prometheus`) and the local gateway, on loopback and free
ports: for the tests where scrapes, rates and alerts are the point, and outage_story."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tools.localdb.pgcluster import free_port
from tools.runtime.gateway import Gateway, make_server
from tools.standins.loopback import serving

T = TypeVar("T")


@contextmanager
def local_gateway(env: Mapping[str, str], template: Path | None = None) -> Iterator[str]:
    """The local API Gateway with the real handlers in worker processes (the functions of
    `template`, default template.yaml); yields its base URL."""
    gateway = Gateway(env=dict(env), template=template)
    try:
        with serving(make_server(gateway, port=free_port())) as server:
            yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        gateway.close()


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Prometheus:
    """A Prometheus process with the given scrape jobs and rule files; query it with PromQL."""

    def __init__(self, work: Path, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.work = work
        self.url = url
        self.proc = proc

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]  # type: ignore[no-any-return]

    def value(self, promql: str) -> float | None:
        """The single sample's value, None when the result is empty."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        return (self.work / "prometheus.log").read_text()[-4000:]

    def wait_for(self, what: str, found: Callable[[], T | None], timeout_s: float) -> T:
        """Poll `found` until it returns something truthy; a bound on the run, not a timing
        assertion, unless the caller's timeout is the requirement under test."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = found()
            except OSError:
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s:g}s: {what}\n{self.log()}")
            time.sleep(0.25)


@contextmanager
def prometheus(
    binary: str,
    scrape_configs: list[dict[str, Any]],
    rules: Mapping[str, Any] | None = None,
    interval: str = "1s",
    rule_files: Sequence[Path] = (),
    tsdb: Path | None = None,
) -> Iterator[Prometheus]:
    """`rules` is written to a file of its own; `rule_files` are loaded as they are; `tsdb`:
    existing TSDB blocks to serve (a fresh, empty one by default)."""
    work = Path(tempfile.mkdtemp(prefix="prometheus-"))
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": scrape_configs,
    }
    files = [str(path) for path in rule_files]
    if rules is not None:
        (work / "rules.yml").write_text(json.dumps(rules))  # JSON is YAML
        files.append(str(work / "rules.yml"))
    if files:
        config["rule_files"] = files
    (work / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={tsdb or work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(work, f"http://127.0.0.1:{port}", proc)
    try:
        server.wait_for("Prometheus ready", lambda: get(f"{server.url}/-/ready")[0] == 200, 30)
        yield server
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
