"""The template's saved Logs Insights queries, run over the logs of real invocations.

The real handlers are invoked (healthy, 404, forced 500, malformed event,
database down, /metrics, a retention run); every JSON line they log is kept with
the log group the template sends it to, and each API call also gets the access
log line API Gateway would write, built from the template's own Format string.
Each QueryDefinition then runs through tests/support/logs_insights.py, and its answer is
checked against what the handlers returned or what the database says, not
against the logs themselves.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.db import SQL
from tests.support.logs_insights import Event, Query, Row, Unsupported, event
from tests.support.monitoring import STACK, log_group_name, saved_queries
from tests.support.runtime import function_handler, reset_runtime
from tools import ROOT
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext
from tools.runtime.template import functions, load_template

REQUEST_ID_PLACEHOLDER = "REQUEST_ID"
FUNCTIONS = {
    "health": "HealthFunction",
    "metrics": "MetricsFunction",
    "retention": "RetentionFunction",
}


def _template_wiring() -> tuple[str, dict[str, str]]:
    """The access log Format and each function's log group, as the template sets them."""
    resources = load_template()["Resources"]
    fmt = resources["Api"]["Properties"]["AccessLogSetting"]["Format"]
    groups = {
        name: log_group_name(
            resources, resources[lid]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        )
        for name, lid in FUNCTIONS.items()
    }
    groups["access"] = log_group_name(resources, "ApiAccessLogGroup")
    return fmt, groups


def access_line(fmt: str, evt: dict[str, Any], resp: dict[str, Any], latency_ms: int) -> Any:
    """API Gateway's access log line for one call: the template's Format, $context filled in."""
    ctx = evt["requestContext"]
    values: dict[str, str] = {
        "requestId": ctx["requestId"],
        "identity.sourceIp": ctx["identity"]["sourceIp"],
        "identity.userAgent": ctx["identity"].get("userAgent") or "-",
        "httpMethod": evt["httpMethod"],
        "resourcePath": evt["resource"],
        "path": ctx["path"],
        "status": str(resp["statusCode"]),
        "responseLatency": str(latency_ms),
        "integrationLatency": str(latency_ms),
        "integrationErrorMessage": "",
        "protocol": ctx["protocol"],
        "responseLength": str(len(resp["body"])),
        "requestTime": ctx["requestTime"],
        "xrayTraceId": "",
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise AssertionError(f"access log Format uses $context.{name}: add it to access_line()")
        return values[name]

    return json.loads(re.sub(r"\$context\.([A-Za-z.]+[A-Za-z])", fill, fmt))


@dataclass
class Invocation:
    response: Any
    context: LambdaContext
    latency_ms: int
    events: list[Event]  # everything filed while it ran, its access line included


@dataclass
class ApiCall:
    function: str
    request_id: str
    method: str
    resource: str
    status: int
    invocation: Invocation


@dataclass
class Recorder:
    """Invokes handlers as Lambda would and files their log lines under their log groups."""

    log_lines: Callable[[], list[dict[str, Any]]]
    monkeypatch: pytest.MonkeyPatch
    events: list[Event] = field(default_factory=list)
    calls: list[ApiCall] = field(default_factory=list)
    _seen: int = 0
    _clock_ms: int = 0
    _warm: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.access_format, self.log_groups = _template_wiring()

    def _file(self, line: dict[str, Any], group: str) -> Event:
        self._clock_ms = max(int(time.time() * 1000), self._clock_ms + 1)
        filed = event(line, log_group=self.log_groups[group], timestamp_ms=self._clock_ms)
        self.events.append(filed)
        return filed

    def invoke(self, function: str, payload: Any) -> Invocation:
        if function not in self._warm:
            # A new container: Powertools keeps its cold-start flag per process.
            self.monkeypatch.setattr("aws_lambda_powertools.logging.logger.is_cold_start", True)
            self._warm.add(function)
        spec = functions()[FUNCTIONS[function]]
        context = LambdaContext(f"{STACK}-{function}", spec.timeout_s, spec.memory_mb)
        started = time.perf_counter()
        resp = function_handler(function)(payload, context)
        latency_ms = max(1, round((time.perf_counter() - started) * 1000))
        from ops.metrics import current

        # A flush handed to the background logs as this invocation's.
        box = current().outbox_if_any()
        assert box is None or box.wait_idle(10)
        lines = self.log_lines()
        filed = [self._file(line, function) for line in lines[self._seen :]]
        self._seen = len(lines)
        return Invocation(resp, context, latency_ms, filed)

    def call(
        self,
        function: str,
        path: str,
        *,
        resource: str | None = None,
        headers: dict[str, str] | None = None,
        source_ip: str = "127.0.0.1",
    ) -> ApiCall:
        evt: dict[str, Any] = proxy_event(  # JSON, as API Gateway sends it
            method="GET",
            path=path,
            resource=resource or path,
            stage="prod",
            headers=headers,
            source_ip=source_ip,
        )
        inv = self.invoke(function, evt)
        line = access_line(self.access_format, evt, inv.response, inv.latency_ms)
        inv.events.append(self._file(line, "access"))
        call = ApiCall(
            function,
            evt["requestContext"]["requestId"],
            "GET",
            str(evt["resource"]),
            int(inv.response["statusCode"]),
            inv,
        )
        self.calls.append(call)
        return call

    def run(self, name: str, groups: frozenset[str] | None = None, **subst: str) -> list[Row]:
        saved = saved_queries()[name]
        text = saved.query.text
        for placeholder, value in subst.items():
            text = text.replace(placeholder, value)
        wanted = {f"000000000000:{g}" for g in (groups or saved.log_groups)}
        return Query(text).run(e for e in self.events if e["@log"] in wanted)


@pytest.fixture
def recorder(
    log_lines: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> Recorder:
    return Recorder(log_lines, monkeypatch)


@pytest.fixture
def api_story(
    db_env: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> Iterator[Recorder]:
    """Health and metrics traffic: healthy, 404, forced 500, malformed, database down."""
    rec = recorder
    rec.call("health", "/health")
    rec.call("health", "/health")
    rec.call("health", "/health/live")
    rec.call("health", "/nope", resource="/{proxy+}")
    rec.call("metrics", "/metrics")

    def boom() -> None:
        raise RuntimeError("forced failure")

    with monkeypatch.context() as patch:
        patch.setattr("health.app.configured_checks", boom)
        rec.call("health", "/health/ready")
    rec.invoke(
        "health", {"path": "/health"}
    )  # malformed: API Gateway never sends it, a caller might

    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@127.0.0.1:{closed_port}/db")
    reset_runtime()
    rec.call("metrics", "/metrics")
    rec.call("health", "/health/detailed")  # its check carries the flush: both fail
    rec.call("health", "/health")  # last: the request-story tests follow this one
    yield rec


# The recorder, the rows each table had expired before the run, and the run's invocation.
RetentionStory = tuple[Recorder, dict[str, int], Invocation]


@pytest.fixture
def retention_story(db_env: str, recorder: Recorder, sql: SQL) -> Iterator[RetentionStory]:
    """One scheduled retention run over expired rows; returns what the database says it had."""
    sql(
        "INSERT INTO inbound_events (source, event_type, received_at) "
        "SELECT 'test', 'old', now() - interval '40 days' FROM generate_series(1, 3)"
    )
    sql(
        "INSERT INTO chat_sessions (channel, user_ref, updated_at) "
        "SELECT 'test', 'u', now() - interval '100 days' FROM generate_series(1, 2)"
    )
    expired = {
        "inbound_events": sql(
            "SELECT count(*) FROM inbound_events WHERE received_at < now() - interval '30 days'"
        )[0][0],
        "chat_sessions": sql(
            "SELECT count(*) FROM chat_sessions WHERE updated_at < now() - interval '90 days'"
        )[0][0],
    }
    scheduled = json.loads((ROOT / "events" / "retention-scheduler.json").read_text())
    # A fresh scheduled time: the same one twice is a duplicate delivery, pruned once.
    scheduled["scheduledTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    yield recorder, expired, recorder.invoke("retention", scheduled)


def test_every_saved_query_is_exercised_here() -> None:
    tested = {
        "slowest-routes-p95",
        "5xx-with-request-ids",
        "request-story",
        "retention-runs",
        "retention-rows-by-table",
        "cold-starts-by-function",
        "errors-by-function",
        "auth-failures-by-ip",
    }
    assert set(saved_queries()) == tested


def test_auth_failures_by_ip_lists_refused_and_throttled_callers(
    db_env: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real 401s from the handlers (a guesser, a caller without a token), a real 200 with the
    token, and the 429s API Gateway answers itself when the stage throttles a caller."""
    monkeypatch.setenv("METRICS_AUTH_TOKEN", "the-real-token")
    guesser, scraper, flooder = "198.51.100.7", "192.0.2.10", "203.0.113.9"
    for i in range(3):
        bad = {"Authorization": f"Bearer guess-{i}", "User-Agent": "scanner/1.0"}
        recorder.call("health", "/health/detailed", headers=bad, source_ip=guesser)
    recorder.call(
        "metrics", "/metrics", headers={"Authorization": "Bearer nope"}, source_ip=guesser
    )
    recorder.call("metrics", "/metrics", source_ip=scraper)  # no token at all
    good = {"Authorization": "Bearer the-real-token"}
    assert recorder.call("metrics", "/metrics", headers=good, source_ip=scraper).status == 200
    assert [c.status for c in recorder.calls[:5]] == [401] * 5
    throttled = proxy_event(method="GET", path="/health", resource="/health", source_ip=flooder)
    gateway_429 = {"statusCode": 429, "body": '{"message":"Too Many Requests"}'}
    for _ in range(2):
        recorder._file(access_line(recorder.access_format, throttled, gateway_429, 0), "access")
    rows = recorder.run("auth-failures-by-ip")
    by_caller = {(r["ip"], r["status"]): (r["requests"], r["routes"]) for r in rows}
    assert by_caller == {
        (guesser, 401): (4, 2),  # /health/detailed and /metrics
        (scraper, 401): (1, 1),  # its 200 is not listed
        (flooder, 429): (2, 1),
    }
    assert [r["requests"] for r in rows] == [4, 2, 1]
    assert rows[0]["user_agent"] == "-"  # its last request had no User-Agent


def test_slowest_routes_groups_access_lines_by_route(api_story: Recorder) -> None:
    rows = api_story.run("slowest-routes-p95")
    by_route = {(r["method"], r["resourcePath"]): r for r in rows}
    expected = Counter((c.method, c.resource) for c in api_story.calls)
    assert {k: r["requests"] for k, r in by_route.items()} == expected
    health = sorted(c.invocation.latency_ms for c in api_story.calls if c.resource == "/health")
    assert by_route[("GET", "/health")]["max_ms"] == health[-1]
    assert by_route[("GET", "/health")]["p95_ms"] == health[-1]  # 3 calls: nearest rank is the max
    p95s = [r["p95_ms"] for r in rows]
    assert p95s == sorted(p95s, reverse=True)


def test_5xx_query_lists_every_server_error_and_nothing_else(api_story: Recorder) -> None:
    rows = api_story.run("5xx-with-request-ids")
    failed = {c.request_id for c in api_story.calls if c.status >= 500}
    assert len(failed) >= 2  # the forced 500 and the database-down 503 at least
    # Each one twice: the handler's request line and API Gateway's access line.
    assert Counter(r["requestId"] for r in rows) == dict.fromkeys(failed, 2)
    assert {r["type"] for r in rows} == {"request", "access"}


def _timestamps(rows: list[dict[str, Any]]) -> list[int]:
    return [r["@timestamp"] for r in rows]


def test_request_story_is_everything_that_request_logged(api_story: Recorder) -> None:
    down = api_story.calls[-1]
    assert down.status == 503
    rows = api_story.run("request-story", REQUEST_ID=down.request_id)
    assert _timestamps(rows) == _timestamps(down.invocation.events)  # all of it, in order
    types = [r["type"] for r in rows]
    # The check carried the pending metrics flush in its round trip: both failed.
    assert types[:2] == ["metrics_flush", "health_check"] and types[-1] == "access"
    assert "request" in types
    assert rows[1]["check"] == "database" and rows[1]["error"]
    # The same story from the Lambda request id (what a REPORT line or a DLQ message carries),
    # less the access line, which only knows the API Gateway id.
    lambda_id = down.invocation.context.aws_request_id
    by_lambda_id = api_story.run("request-story", REQUEST_ID=lambda_id)
    assert _timestamps(by_lambda_id) == _timestamps(down.invocation.events[:-1])


def test_errors_by_function_counts_handler_errors(api_story: Recorder) -> None:
    rows = api_story.run("errors-by-function")
    by_type: Counter[tuple[str, str]] = Counter()
    for r in rows:
        by_type[(r["function_name"], r["type"])] += r["errors"]
    health, metrics = f"{STACK}-health", f"{STACK}-metrics"
    assert by_type == {
        (health, "error"): 2,  # the forced 500 and the malformed event
        # With the database down /metrics still answers (200, database_up 0) and logs its
        # failed check, as /health/detailed and /health do; a new container, the scrape had
        # nothing to flush; the two health checks carry the pending flush, and both fail.
        (health, "metrics_flush"): 2,
        (metrics, "health_check"): 1,
        (health, "health_check"): 2,
    }
    messages = {r["message"] for r in rows if r["type"] == "error"}
    assert messages == {"unhandled error", "malformed event"}
    # The outage's rows say why: the newest error text of each.
    for r in rows:
        if r["type"] in ("health_check", "metrics_flush"):
            assert "connection refused" in r["last_error"], r


def test_cold_starts_count_one_per_new_container(api_story: Recorder) -> None:
    rows = api_story.run("cold-starts-by-function")
    assert {r["function_name"]: r["cold_starts"] for r in rows} == {
        f"{STACK}-health": 1,
        f"{STACK}-metrics": 1,
    }


def test_cold_starts_include_the_retention_function(retention_story: RetentionStory) -> None:
    rec, _, _ = retention_story
    rows = rec.run("cold-starts-by-function")
    assert {r["function_name"]: r["cold_starts"] for r in rows} == {f"{STACK}-retention": 1}


def test_retention_runs_query_counts_started_and_completed(retention_story: RetentionStory) -> None:
    rec, _, _ = retention_story
    rows = rec.run("retention-runs")
    assert {r["status"]: r["runs"] for r in rows} == {"started": 1, "completed": 1}


def test_retention_rows_by_table_matches_what_the_database_had(
    retention_story: RetentionStory,
) -> None:
    rec, expired, _ = retention_story
    rows = rec.run("retention-rows-by-table")
    assert {r["table"]: r["rows_deleted"] for r in rows} == expired
    assert all(r["runs"] == 1 and r["dryRun"] == 0 and r["all_completed"] == 1 for r in rows)


def test_request_story_finds_a_retention_run_by_lambda_request_id(
    retention_story: RetentionStory,
) -> None:
    rec, _, run = retention_story
    rows = rec.run("request-story", REQUEST_ID=run.context.aws_request_id)
    assert _timestamps(rows) == _timestamps(run.events)
    assert [r["type"] for r in rows].count("retention") == 2


# --- the interpreter refuses what it does not model -------------------------------


@pytest.mark.parametrize(
    "query",
    [
        'parse @message "* *" as a, b',
        "filter strlen(message) > 3",
        "stats stddev(x) by y",
        "sort duration",
        "display a, b",
        "filter a ~ 1",
        "stats count(*) by y | limit x",
        "fields a | | limit 1",
    ],
)
def test_interpreter_rejects_unsupported_syntax(query: str) -> None:
    with pytest.raises(Unsupported):
        Query(query).run([{"a": 1}])


def test_latest_is_the_newest_value_of_the_group() -> None:
    events = [
        event({"t": "a", "error": "old"}, log_group="g", timestamp_ms=1),
        event({"t": "a"}, log_group="g", timestamp_ms=3),  # no error field: not a candidate
        event({"t": "a", "error": "new"}, log_group="g", timestamp_ms=2),
    ]
    rows = Query("stats latest(error) as e, earliest(error) as f by t").run(events)
    assert rows == [{"t": "a", "e": "new", "f": "old"}]


def test_interpreter_semantics_match_logs_insights() -> None:
    events = [
        event(
            {"type": "x", "ok": True, "n": 5, "nested": {"k": "v"}}, log_group="g", timestamp_ms=1
        ),
        event({"type": "y", "ok": False, "n": "7"}, log_group="g", timestamp_ms=2),
        event({"message": "no type"}, log_group="g", timestamp_ms=3),
    ]

    def run(query: str) -> list[Row]:
        return Query(query).run(events)

    assert len(run("filter ok = 1")) == 1  # JSON booleans are 1/0
    assert len(run('filter nested.k = "v"')) == 1  # nested keys flatten with dots
    assert len(run("filter n > 6")) == 1  # numeric strings compare as numbers
    assert len(run('filter type != "x"')) == 1  # a missing field matches no comparison
    assert len(run('filter message like "type"')) == 1
    assert len(run("filter not ispresent(type)")) == 1
    assert run("stats sum(n) as s, count(type) as c") == [{"s": 12.0, "c": 2}]
