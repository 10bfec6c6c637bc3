"""`make prom`: Debian's Prometheus scraping `make run`, with the shipped rules loaded.

    python -m tools.standins.prom [--port 9090]

Runs `prometheus` in the foreground (Ctrl-C stops it) on 127.0.0.1 with a copy of
infra/monitoring/prometheus.local.yml written to .local/prometheus/ (`LOCAL_DATA_DIR`
moves it): the rule files by absolute path, the target on PORT, and, when
METRICS_AUTH_TOKEN is set, the token in a file of its own (mode 600) for the scrape's
`authorization`. Its data and log stay in that folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from ops.config import Settings, settings
from tools import ROOT
from tools.cli import ToolError, ignore_further_interrupts, run
from tools.local_data import local_dir
from tools.localdb.run_database import port_is_free

MONITORING = ROOT / "infra" / "monitoring"
LOCAL_CONFIG = MONITORING / "prometheus.local.yml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=9090, help="Prometheus' port (9090)")
    args = parser.parse_args(argv)
    return run("prom", lambda: serve(args.port))


def duration_s(text: str) -> float:
    """A Prometheus duration of one unit (`15s`, `1m`), in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number, unit = text.rstrip("mshd"), text[len(text.rstrip("mshd")) :]
    if not number.isdigit() or unit not in units:
        raise ValueError(f"not a one-unit Prometheus duration: {text!r}")
    return int(number) * units[unit]


def scrape_interval_s(path: Path = LOCAL_CONFIG) -> float:
    """The global scrape interval of a Prometheus config (default: `make prom`'s)."""
    return duration_s(yaml.safe_load(path.read_text())["global"]["scrape_interval"])


def binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise ToolError(
            "no `prometheus` on PATH",
            "Install Debian's: apt-get install prometheus (or put a Prometheus 2.x on PATH).",
        )
    return path


def local_config(cfg: Settings, folder: Path) -> dict[str, Any]:
    """The shipped local config, pointed at this `make run` (its port and token)."""
    config: dict[str, Any] = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["rule_files"] = [str(MONITORING / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{cfg.local_port}"]}]
    if cfg.metrics_token is not None:
        token = cfg.metrics_token.strip()
        if not token:
            raise ToolError(
                "METRICS_AUTH_TOKEN is blank: make run answers /metrics with 503",
                "Set a token, or unset it, in both shells (make run's and this one).",
            )
        token_file = folder / "metrics-token"
        token_file.touch(mode=0o600)
        token_file.chmod(0o600)
        token_file.write_text(token)
        job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    return config


def serve(port: int) -> int:
    exe = binary()
    cfg = settings()
    if not port_is_free(port):
        raise ToolError(
            f"cannot listen on 127.0.0.1:{port}: Address already in use",
            "Another `make prom`, or a Prometheus service? Another port: make prom PROM_PORT=9091",
        )
    folder = local_dir() / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config = local_config(cfg, folder)
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    target = f"http://127.0.0.1:{cfg.local_port}/metrics"
    every = config["global"]["scrape_interval"]
    with (folder / "prometheus.log").open("a") as log:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(proc, port, folder / "prometheus.log")
            print(f"prometheus: http://127.0.0.1:{port}/alerts (rules: alerts, recording, SLO)")
            print(f"  scraping {target} every {every} ({_auth(cfg)}); log: {folder}/prometheus.log")
            if port_is_free(cfg.local_port):
                print(f"  nothing answers on 127.0.0.1:{cfg.local_port} yet: start `make run`")
            sys.stdout.flush()
            return _wait(proc)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def _auth(cfg: Settings) -> str:
    return "with METRICS_AUTH_TOKEN" if cfg.metrics_token else "no token"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise ToolError(f"prometheus stopped: {last[-300:]}", f"Its log: {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise ToolError("prometheus did not become ready within 60 s", f"Its log: {log}")


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (tools.cli turns it into this)
        ignore_further_interrupts()
        print("stopping", flush=True)
        proc.terminate()
        proc.wait(30)
        return 0
    if proc.returncode != 0:
        raise ToolError(f"prometheus exited with code {proc.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
