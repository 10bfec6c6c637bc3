"""Alert routing: infra/monitoring/alertmanager.yml, checked by amtool for every alert the
rule files define, and a real Prometheus delivering through a real Alertmanager to
loopback stand-ins for PagerDuty, Slack and an SMTP server."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support.binaries import require_binary
from tests.support.monitoring import inhibited
from tools import ROOT
from tools.localdb.pgcluster import free_port
from tools.standins.loopback import serving

MONITORING = ROOT / "infra" / "monitoring"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager.yml"
SERVICE = "realestate-backend"

# Where each severity must land; an alert whose severity is not here has no intended
# receiver (it would fall through to the default e-mail) and fails the routing test.
RECEIVER_FOR_SEVERITY = {"critical": "pager", "warning": "chat"}
DEFAULT_RECEIVER = "email"

# Secrets a receiver may only name as a file (`<key>_file`), never inline.
INLINE_SECRETS = {
    "routing_key",
    "service_key",
    "api_url",
    "auth_password",
    "smtp_auth_password",
    "password",
    "bearer_token",
    "credentials",
    "slack_api_url",
}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_files() -> list[Path]:
    """The rule files Prometheus loads (prometheus.yml `rule_files`): one list for all checks."""
    return [MONITORING / name for name in _yaml(MONITORING / "prometheus.yml")["rule_files"]]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files()
        for group in _yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def _alert_labels(rule: dict[str, Any]) -> dict[str, str]:
    """The labels an alert reaches Alertmanager with (rule labels, name, external label)."""
    return {**rule.get("labels", {}), "alertname": rule["alert"], "service": SERVICE}


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_binary("amtool")


def _amtool(amtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [amtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )


def _routes_to(amtool: str, labels: dict[str, str]) -> str:
    proc = _amtool(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        *(f"{k}={v}" for k, v in sorted(labels.items())),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


# -- the config -----------------------------------------------------------------------


def test_config_passes_amtool_check(amtool: str) -> None:
    proc = _amtool(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_prometheus_sends_alerts_with_the_service_label() -> None:
    config = _yaml(MONITORING / "prometheus.yml")
    assert config["global"]["external_labels"]["service"] == SERVICE
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["api_version"] == "v2"
    assert alertmanagers["static_configs"][0]["targets"]


def test_grouping_and_intervals() -> None:
    route = _yaml(ALERTMANAGER_CONFIG)["route"]
    assert route["receiver"] == DEFAULT_RECEIVER
    assert route["group_by"] == ["alertname", "service"]
    for child in route["routes"]:
        assert "group_by" not in child or child["group_by"] == route["group_by"]
        assert not child.get("continue"), "one receiver per alert"


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def test_receivers_read_their_secrets_from_files() -> None:
    config = _yaml(ALERTMANAGER_CONFIG)
    found = set()
    for path, key, value in _walk(config):
        assert key not in INLINE_SECRETS, f"{path}.{key}: inline secret; use {key}_file"
        if key.endswith("_file"):
            assert str(value).startswith("/etc/alertmanager/secrets/"), f"{path}.{key}"
            found.add(key)
    assert {"routing_key_file", "api_url_file", "smtp_auth_password_file"} <= found
    kinds = {r["name"]: set(r) - {"name"} for r in config["receivers"]}
    assert kinds == {
        "pager": {"pagerduty_configs"},
        "chat": {"slack_configs"},
        "email": {"email_configs"},
    }


# -- every alert reaches its receiver ------------------------------------------------------


def test_every_alert_routes_to_the_receiver_of_its_severity(amtool: str) -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        labels = _alert_labels(rule)
        severity = labels.get("severity")
        intended = RECEIVER_FOR_SEVERITY.get(str(severity))
        assert intended, f"{rule['alert']}: severity {severity!r} has no intended receiver"
        assert _routes_to(amtool, labels) == intended, rule["alert"]


def test_an_alert_without_a_known_severity_falls_to_the_default(amtool: str) -> None:
    labels = {"alertname": "Unrouted", "service": SERVICE, "severity": "info"}
    assert _routes_to(amtool, labels) == DEFAULT_RECEIVER
    assert _routes_to(amtool, {"alertname": "NoSeverity"}) == DEFAULT_RECEIVER


def test_inhibit_rules_name_alerts_the_rules_define() -> None:
    defined = {r["alert"] for r in alert_rules()}
    named = set()
    for rule in _yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if found := re.fullmatch(r'alertname=~?"(.*)"', matcher):
                named |= set(found.group(1).split("|"))
    assert named <= defined, named - defined


def test_database_down_silences_only_its_symptoms() -> None:
    rules = {r["alert"]: _alert_labels(r) for r in alert_rules()}
    down = {**rules["DatabaseDown"], "service": SERVICE}
    assert inhibited(rules["MetricsFlushFailing"], down)
    assert inhibited(rules["RetentionNotSucceeded"], down)
    for kept in ("HighErrorRate", "MetricsScrapeDown", "DependencyDown"):
        assert not inhibited(rules[kept], down), kept
    other_service = {**rules["MetricsFlushFailing"], "service": "another"}
    assert not inhibited(other_service, down)


def test_a_critical_alert_silences_its_warning_twin() -> None:
    page = {"alertname": "X", "service": SERVICE, "severity": "critical"}
    assert inhibited({**page, "severity": "warning"}, page)
    assert not inhibited({**page, "severity": "warning", "alertname": "Y"}, page)
    assert not inhibited({**page, "severity": "critical"}, {**page, "severity": "warning"})


# -- a real Prometheus and Alertmanager ----------------------------------------------------


class _Sink(BaseHTTPRequestHandler):
    """Records every POST body (PagerDuty events, Slack messages) on its _SinkServer."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        assert isinstance(self.server, _SinkServer)
        self.server.received.append((self.path, json.loads(body)))
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"success"}')

    def log_message(self, *args: Any) -> None:
        pass


class _SinkServer(ThreadingHTTPServer):
    """A loopback _Sink: (path, JSON body) of every POST, in the order received."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Sink)
        self.received: list[tuple[str, dict[str, Any]]] = []


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for Alertmanager: EHLO with AUTH PLAIN, one message per session."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _SmtpServer)
        mail: dict[str, Any] = {"auth": None, "data": []}
        self._reply("220 loopback ESMTP")
        in_data = False
        while line := self.rfile.readline():
            text = line.decode().rstrip("\r\n")
            if in_data:
                if text == ".":
                    in_data = False
                    server.mails.append(mail)
                    self._reply("250 queued")
                else:
                    mail["data"].append(text)
                continue
            verb = text.split(" ")[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-loopback\r\n250 AUTH PLAIN\r\n")
            elif verb == "AUTH":  # AUTH PLAIN <base64(authzid NUL user NUL password)>
                mail["auth"] = base64.b64decode(text.split(" ")[2]).split(b"\0")
                self._reply("235 authenticated")
            elif verb == "DATA":
                in_data = True
                self._reply("354 go ahead")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("250 ok")

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")


class _SmtpServer(socketserver.ThreadingTCPServer):
    """A loopback _Smtp: every message it accepted (`auth`, `data` lines), in order."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Smtp)
        self.mails: list[dict[str, Any]] = []


@pytest.fixture
def smtp() -> Iterator[_SmtpServer]:
    with serving(_SmtpServer()) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[_SinkServer]:
    with serving(_SinkServer()) as server:
        yield server


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T], seconds: float = 60) -> T:
    """What `probe` finds once it is truthy (an OSError counts as nothing found yet)."""
    deadline = time.monotonic() + seconds  # a bound on the run, not a performance assertion
    while time.monotonic() < deadline:
        found: T | None
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _local_alertmanager_config(
    work: Path, sink_url: str, smtp_port: int, routing_key: str, smtp_password: str
) -> Path:
    """The committed config with its secret files and endpoints pointed at loopback (SMTP
    without TLS there), and its waits shortened; routes, receivers and inhibit rules stay
    as committed."""
    config = _yaml(ALERTMANAGER_CONFIG)
    secrets = work / "secrets"
    secrets.mkdir()
    (secrets / "routing-key").write_text(routing_key)
    (secrets / "slack-url").write_text(f"{sink_url}/slack")
    (secrets / "smtp-password").write_text(smtp_password)
    config["global"].update(
        pagerduty_url=f"{sink_url}/pagerduty",
        smtp_smarthost=f"127.0.0.1:{smtp_port}",
        smtp_auth_password_file=str(secrets / "smtp-password"),
        smtp_require_tls=False,
    )
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd["routing_key_file"] = str(secrets / "routing-key")
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(secrets / "slack-url")
    path = work / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


# Real alert rules with `vector(1)` as their expression: they fire at once, with their
# real labels and annotations.
FIRING = {
    "DatabaseDown": "vector(1)",
    "DependencyDown": 'label_replace(vector(1), "check", "moltbot", "", "")',
    "MetricsFlushFailing": 'label_replace(vector(1), "function", "health", "", "")',
}


def _write_firing_rules(work: Path, names: list[str]) -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    firing = [
        {**{k: v for k, v in rules[name].items() if k != "for"}, "expr": FIRING[name]}
        for name in names
    ]
    (work / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "t", "rules": firing}]}))


def _local_prometheus_config(work: Path, alertmanager: str) -> Path:
    """The committed prometheus.yml (external labels, alerting section) pointed at the local
    Alertmanager, evaluating rules.yml every second."""
    config = _yaml(MONITORING / "prometheus.yml")
    config["global"].update(evaluation_interval="1s")
    config["rule_files"] = [str(work / "rules.yml")]
    config["scrape_configs"] = []
    (am,) = config["alerting"]["alertmanagers"]
    am["static_configs"] = [{"targets": [alertmanager]}]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_prometheus_pages_through_alertmanager(sink: _SinkServer, smtp: _SmtpServer) -> None:
    """DatabaseDown pages PagerDuty with the key from the file, the dependency warning goes
    to Slack, and the flush-failure warning that follows from the outage is inhibited by it.
    An alert without a known severity is e-mailed, logging in with the password file."""
    alertmanager_bin = require_binary("prometheus-alertmanager", "alertmanager")
    prometheus_bin = require_binary("prometheus")
    work = Path(tempfile.mkdtemp(prefix="alertmanager-"))
    routing_key, smtp_password = "routing-key-from-the-secret-file", "smtp-password-from-its-file"
    sink_url = f"http://127.0.0.1:{sink.server_address[1]}"
    am_port, prom_port = free_port(), free_port()
    am_config = _local_alertmanager_config(
        work, sink_url, smtp.server_address[1], routing_key, smtp_password
    )
    prom_config = _local_prometheus_config(work, f"127.0.0.1:{am_port}")
    # The cause first; its symptom once the cause is in Alertmanager (as in an outage,
    # where the flush warning follows DatabaseDown by minutes): inhibition acts on
    # alerts whose source is already there when their group is due.
    _write_firing_rules(work, ["DatabaseDown", "DependencyDown"])
    log = (work / "processes.log").open("w")
    procs = [
        subprocess.Popen(
            [
                alertmanager_bin,
                f"--config.file={am_config}",
                f"--storage.path={work / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip port: a single loopback instance
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={work / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                # Alerts evaluated before the Alertmanager is discovered wait for the
                # next resend (1m by default). Each send is valid for 4 resend delays: at
                # 1 s a loaded machine let DatabaseDown lapse (resolved) between sends.
                "--rules.alert.resend-delay=5s",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
    ]
    received = sink.received
    try:
        api = f"http://127.0.0.1:{am_port}/api/v2/alerts"

        def alerts(count: int) -> Callable[[], dict[str, dict[str, Any]]]:
            def found() -> dict[str, dict[str, Any]]:
                by_name = {a["labels"]["alertname"]: a for a in _get_json(api)}
                processed = all(a["status"]["state"] != "unprocessed" for a in by_name.values())
                return by_name if len(by_name) == count and processed else {}

            return found

        try:
            _wait_for("DatabaseDown and DependencyDown in Alertmanager", alerts(2))
            _write_firing_rules(work, list(FIRING))
            procs[1].send_signal(signal.SIGHUP)  # Prometheus reloads its config and rules
            by_name = _wait_for("three alerts in Alertmanager", alerts(3))
        except AssertionError as exc:
            raise AssertionError((work / "processes.log").read_text()[-4000:]) from exc

        def delivered() -> dict[str, list[dict[str, Any]]]:
            paths: dict[str, list[dict[str, Any]]] = {}
            for path, body in list(received):
                paths.setdefault(path, []).append(body)
            return paths if {"/pagerduty", "/slack"} <= set(paths) else {}

        paths = _wait_for("a page and a chat message", delivered)
        unrouted = {"alertname": "Unrouted", "service": SERVICE, "severity": "info"}
        post = urllib.request.Request(
            api,
            data=json.dumps([{"labels": unrouted, "annotations": {"summary": "x"}}]).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(post, timeout=5).close()
        mails = smtp.mails
        _wait_for("an e-mail", lambda: list(mails))
        time.sleep(2)  # group_interval 1s: anything else due would have arrived by now
        paths = delivered()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        log.close()
    try:
        for alert in by_name.values():
            assert alert["labels"]["service"] == SERVICE  # prometheus.yml's external label
        suppressed = by_name["MetricsFlushFailing"]["status"]
        assert suppressed["state"] == "suppressed" and suppressed["inhibitedBy"], suppressed
        assert by_name["DatabaseDown"]["status"]["state"] == "active"
        assert by_name["DependencyDown"]["status"]["state"] == "active"

        pages = paths["/pagerduty"]
        assert {p["routing_key"] for p in pages} == {routing_key}
        assert "trigger" in {p["event_action"] for p in pages}
        paged = " ".join(p["payload"]["summary"] for p in pages)
        assert "DatabaseDown" in paged and "MetricsFlushFailing" not in paged
        chats = " ".join(json.dumps(m) for m in paths["/slack"])
        assert "DependencyDown" in chats and "MetricsFlushFailing" not in chats
        (mail,) = mails
        config = _yaml(ALERTMANAGER_CONFIG)
        user = config["global"]["smtp_auth_username"]
        assert mail["auth"] == [b"", user.encode(), smtp_password.encode()]
        body = "\n".join(mail["data"])
        assert "Unrouted" in body and "DatabaseDown" not in body
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
