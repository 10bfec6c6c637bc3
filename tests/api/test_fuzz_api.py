"""Property-based: generated API Gateway events and headers, for every route of every API
function, never produce a 500 or a traceback, and each writes exactly one request line.

Thousands of examples per run (HYPOTHESIS_EXAMPLES overrides the count per test).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.runtime import function_handler
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext
from tools.runtime.template import functions

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "2000"))
ALLOWED = {200, 204, 400, 401, 404, 405, 413, 414, 503}  # 204: OPTIONS


def api_routes() -> dict[str, list[tuple[str, str]]]:
    """(method, path) of every Api event in template.yaml, by function package."""
    routes: dict[str, list[tuple[str, str]]] = {}
    for spec in functions().values():
        if spec.routes:
            # `any` routes every method; the handlers answer GET (and HEAD, OPTIONS from it)
            routes[spec.package] = [
                ("GET" if r.method == "ANY" else r.method, r.path) for r in spec.routes
            ]
    return routes


ROUTES = api_routes()
# Any character at all, lone surrogates and control characters included.
anything = st.characters(codec=None, exclude_categories=())
texts = st.text(anything, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
header_values = st.one_of(
    texts,
    st.sampled_from(
        [
            "Bearer t0k",
            "Bearer ",
            "bearer t0k",
            "Bearer t0k\udcff",
            "Basic dDBr",
            "application/health+json",
            "application/openmetrics-text; version=1.0.0; q=nan",
            "text/plain;q=abc, application/openmetrics-text;q=1e999",
            "*/*;q=-1",
        ]
    ),
    json_values,
)
header_names = st.one_of(
    texts, st.sampled_from(["Authorization", "Accept", "authorization", "ACCEPT", "Host"])
)


def paths(templates: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(templates),
        st.sampled_from(templates).map(lambda p: p + "/"),
        st.builds(lambda t: "/" + t, texts),
        st.builds(lambda p, t: p + t, st.sampled_from(templates), texts),
        st.sampled_from([100, 8192, 8193, 20_000]).map(lambda n: "/" + "x" * n),
    )


@st.composite
def events(draw: st.DrawFn, routes: list[tuple[str, str]]) -> Any:
    templates = [path for _, path in routes]
    kind = draw(st.integers(0, 19))
    if kind == 0:  # now and then, not an API Gateway event at all
        return draw(json_values)
    if kind < 5:  # a well-formed call of a route, with or without the token
        method, path = draw(st.sampled_from(routes))
        auth = draw(st.sampled_from([{}, {"Authorization": "Bearer t0k"}]))
        return proxy_event(method=method, path=path, resource=path, headers=auth)
    methods = [m for m, _ in routes] + ["POST", "HEAD", "OPTIONS"]
    method = draw(st.one_of(st.sampled_from(methods), texts))
    path = draw(paths(templates))
    headers = draw(st.dictionaries(header_names, header_values, max_size=4))
    event: dict[str, Any] = proxy_event(method="GET", path="/", resource="/")
    event.update(httpMethod=method, path=path, headers=headers)
    event["resource"] = draw(st.one_of(st.sampled_from(templates), st.just(path), json_values))
    if draw(st.booleans()):
        event["queryStringParameters"] = draw(
            st.one_of(st.none(), st.dictionaries(texts, json_values, max_size=3), json_values)
        )
    if draw(st.booleans()):
        event["body"] = draw(st.one_of(st.none(), texts, json_values))
    if draw(st.booleans()):
        event["requestContext"] = draw(
            st.one_of(st.fixed_dictionaries({"requestId": json_values}), json_values)
        )
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=2)):
        event[key] = draw(json_values)  # any field of any type
    return event


@pytest.fixture
def strict_log() -> Iterator[io.BytesIO]:
    from ops.log import logger

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)  # Powertools' stdout handler
    previous = handler.setStream(stream)
    yield raw
    handler.setStream(previous)


def check_invocation(function: str, event: Any, log: io.BytesIO) -> int:
    before = len(log.getvalue())
    resp = function_handler(function)(event, LambdaContext(function, 10))
    status = int(resp["statusCode"])
    assert status in ALLOWED, (status, resp["body"][:500])
    method = event.get("httpMethod") if isinstance(event, dict) else None
    head = status != 400 and isinstance(method, str) and method.upper() == "HEAD"
    if head or status == 204:  # status and headers only (400: not a request it parsed)
        assert resp["body"] == ""
    elif "json" in resp["headers"]["Content-Type"]:
        json.loads(resp["body"])
    written = log.getvalue()[before:].decode()
    # Judged on the parsed records, not the raw text: Hypothesis also draws the strings it
    # finds in source code, so a generated path may well read "unhandled error".
    stray = [line for line in written.split("\n") if line and not line.startswith("{")]
    assert not stray, stray[:3]  # a traceback or anything else that is not a JSON record
    lines = [json.loads(line) for line in written.split("\n") if line.startswith("{")]
    assert not [x for x in lines if "exception" in x or x.get("message") == "unhandled error"]
    assert len([x for x in lines if x.get("type") == "request"]) == 1
    assert all(len(line) < 4000 for line in written.split("\n"))
    return status


CONFIGS = ["database and token", "nothing configured"]


@pytest.fixture(params=CONFIGS)
def container(
    request: pytest.FixtureRequest, app_env: Callable[..., None], strict_log: io.BytesIO
) -> tuple[str, io.BytesIO]:
    if request.param == "database and token":
        app_env(
            DATABASE_URL=request.getfixturevalue("database_url"),
            METRICS_AUTH_TOKEN="t0k",
            HEALTH_DB_TIMEOUT_S="2",
        )
    config: str = request.param
    return config, strict_log


@pytest.mark.parametrize("function", sorted(ROUTES))
def test_no_generated_event_is_a_500(function: str, container: tuple[str, io.BytesIO]) -> None:
    config, log = container
    seen: set[int] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(events(ROUTES[function]))
    def property_(event: Any) -> None:
        seen.add(check_invocation(function, event, log))

    property_()
    # Not vacuous: the generated events reached the handlers, not only the router.
    expected = {200, 400, 404, 405, 414} | ({401} if config == CONFIGS[0] else set())
    if function == "health" and config != CONFIGS[0]:
        expected.add(503)  # /metrics answers a database outage with database_up 0
    assert expected <= seen, sorted(seen)


def test_every_api_function_is_covered() -> None:
    assert set(ROUTES) == {"health", "metrics"}
    assert {p for _, p in ROUTES["health"]} >= {"/health", "/health/ready", "/health/detailed"}


scheduled_events = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"source": st.sampled_from(["scheduler", "aws.events", "x"])},
        optional={
            "scheduleArn": json_values,
            "scheduledTime": st.one_of(json_values, st.just("2026-01-01T03:00:00Z")),
            "id": json_values,
            "runId": st.one_of(json_values, st.just("r" * 5000)),
            "dryRun": json_values,
            "tables": json_values,
            "attemptNumber": json_values,
            "requestPayload": json_values,
            "responseContext": json_values,
        },
    ),
)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(scheduled_events)
def test_the_retention_event_is_a_run_or_one_clear_bounded_error(event: object) -> None:
    """The scheduled function's input: a run identity, or EventError (no TypeError, no
    unbounded echo of what was sent)."""
    from retention import inputs
    from retention.model import EventError

    try:
        inputs.identify(event, "req-1")
    except EventError as exc:
        assert len(str(exc)) < 600
