"""PROBE_LOG_SAMPLE_RATE: which request lines of probe routes are written, and the count
that every written line and the shutdown summary carry for those that were not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ops.api import Api, Request, Response, json_response
from ops.metrics import process_hooks
from ops.wiring import service_api
from tests.support.runtime import call_api


def probe_app(statuses: list[int]) -> Api:
    app = service_api()
    answers = iter(statuses)

    @app.get("/health/ready")
    def ready(_: Request) -> Response:
        return json_response(next(answers), {})

    @app.get("/api/orders")
    def orders(_: Request) -> Response:
        return json_response(200, {})

    return app


@pytest.mark.parametrize("rate", ["1", "0.25", "0.1", "0"])
def test_sampled_lines_account_for_every_probe_and_failures_are_all_written(
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    rate: str,
) -> None:
    app_env(PROBE_LOG_SAMPLE_RATE=rate)
    monkeypatch.setattr(process_hooks, "_shutdown_hooks", [])  # this app's only
    statuses = [503 if i % 7 == 3 else 200 for i in range(200)]
    app = probe_app(statuses)
    for _ in statuses:
        call_api(app.lambda_handler, "/health/ready")
    for _ in range(5):
        call_api(app.lambda_handler, "/api/orders")  # not a probe: always written
    process_hooks.flush_at_shutdown()  # the real shutdown path runs the summary hook
    lines = log_lines()
    requests = [line for line in lines if line.get("type") == "request"]
    probe_ok = [r for r in requests if r["route"] == "/health/ready" and r["statusCode"] == 200]
    failed = [r for r in requests if r["statusCode"] == 503]
    assert len(failed) == statuses.count(503)  # a failing probe is never sampled out
    assert all("linesRepresented" not in r for r in failed)
    assert len([r for r in requests if r["route"] == "/api/orders"]) == 5
    summaries = [
        line["linesNotWritten"] for line in lines if line.get("type") == "request_sampling"
    ]
    if rate == "1":  # the default: every line, as before, no extra field
        assert len(probe_ok) == statuses.count(200) and summaries == []
        assert all("linesRepresented" not in r for r in requests)
        return
    assert len(probe_ok) == -(-statuses.count(200) * int(float(rate) * 100) // 100)
    represented = sum(r["linesRepresented"] for r in probe_ok)
    assert represented + sum(summaries) == statuses.count(200)
    assert all(r["linesRepresented"] >= 1 for r in probe_ok)  # each stands for itself too
    assert len(summaries) <= 1


def test_the_rate_is_validated(app_env: Callable[..., None]) -> None:
    from ops.config import ConfigError, settings

    app_env(PROBE_LOG_SAMPLE_RATE="1.5")
    with pytest.raises(ConfigError, match="PROBE_LOG_SAMPLE_RATE"):
        settings()
