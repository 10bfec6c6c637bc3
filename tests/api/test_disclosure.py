"""Unauthenticated routes reveal nothing about the infrastructure; a malformed DATABASE_URL
or secret is the same 503 as an unreachable database, with the cause in the log only."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.db import SQL
from tests.support.runtime import FunctionInvoker, function_handler
from tools.localdb.pgcluster import PgCluster
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext

PUBLIC = ("/health", "/health/live", "/health/ready")
# What must never reach an unauthenticated caller: hosts, ports, users, database names,
# SQLSTATEs, server source files and lines, driver messages.
LEAKS = re.compile(
    r"127\.0\.0\.1|localhost|app_user|bundle_test|no_such_db|SQLSTATE|\b28P01\b|\b3D000\b"
    r"|\.c\b|line \d|password|authentication|cannot connect|errno|timed out|PGSQL|postgres",
    re.IGNORECASE,
)


def scrape(headers: dict[str, str] | None = None) -> tuple[int, str]:
    handler = function_handler("metrics")
    event = proxy_event(method="GET", path="/metrics", resource="/metrics", headers=headers)
    resp = handler(event, LambdaContext("metrics", 10))
    return resp["statusCode"], resp["body"]


def database_down(scraped: tuple[int, str]) -> bool:
    """/metrics as it answers with the database unreachable: 200, `database_up 0`."""
    status, text = scraped
    return status == 200 and re.search(r"^database_up 0(\.0)?$", text, re.M) is not None


def failing_urls(pg_cluster: PgCluster, closed_port: int, blackhole: int) -> dict[str, str]:
    return {
        "refused": f"postgresql://app_user:pw@127.0.0.1:{closed_port}/bundle_test",
        "timeout": f"postgresql://app_user:pw@127.0.0.1:{blackhole}/bundle_test",
        "auth_failed": f"postgresql://app_user:wrong@127.0.0.1:{pg_cluster.port}/bundle_test",
    }


@pytest.mark.parametrize("reason", ["refused", "timeout", "auth_failed"])
def test_public_routes_say_down_and_why_in_a_fixed_vocabulary(
    pg_cluster: PgCluster,
    database_url: str,
    sql: SQL,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    closed_port: int,
    blackhole: int,
    log_lines: Callable[[], list[dict[str, Any]]],
    reason: str,
) -> None:
    sql("DROP ROLE IF EXISTS app_user")
    sql("CREATE ROLE app_user LOGIN PASSWORD 'right'")
    try:
        app_env(
            DATABASE_URL=failing_urls(pg_cluster, closed_port, blackhole)[reason],
            HEALTH_DB_TIMEOUT_S="0.5",
        )
        status, _, body = health_api("/health/ready")
        assert status == 503
        assert set(body) == {"status", "timestamp", "checks"}
        assert body["checks"] == {
            "database": {
                "status": "down",
                "reason": reason,
                "latencyMs": body["checks"]["database"]["latencyMs"],
            }
        }
        status, _, body = health_api("/health")
        assert (status, body) == (503, {"status": "error", "db": "disconnected"})
        for path in PUBLIC:
            text = json.dumps(health_api(path)[2])
            assert not LEAKS.search(text), (path, text)
        # The details are in the log, where an operator can use them.
        failed = [x for x in log_lines() if x.get("type") == "health_check"]
        assert failed and all(x["reason"] == reason for x in failed)
        assert ("timed out" if reason == "timeout" else "app_user@127.0.0.1") in failed[0]["error"]
    finally:
        sql("DROP ROLE IF EXISTS app_user")


def test_a_server_error_shows_no_sqlstate_file_or_line(
    database_url: str,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    # A database that does not exist: the server answers with its full error fields.
    app_env(DATABASE_URL=database_url.rsplit("/", 1)[0] + "/no_such_db")
    status, _, body = health_api("/health/ready")
    assert status == 503 and body["checks"]["database"]["reason"] == "error"
    assert not LEAKS.search(json.dumps(body))
    (failed,) = [x for x in log_lines() if x.get("type") == "health_check"]
    assert "no_such_db" in failed["error"]


MALFORMED_URLS = [
    "postgresql://app:pw@127.0.0.1:notaport/app",
    "postgresql://app:pw@127.0.0.1:99999/app",
    "mysql://app:pw@127.0.0.1/app",
    "not a url at all",
    "postgresql://app:pw@127.0.0.1/app?port=x",
    "postgresql://app:pw@127.0.0.1/app?sslmode=bogus",
    "postgresql://app:pw@127.0.0.1/app?connect_timeout=5",
    "postgresql://app@127.0.0.1/app?pw",
    "postgresql://app:pw@[::1/app",
    "postgresql://app:pw@host\udcff/app",
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_database_url_is_the_503_of_an_unreachable_database(
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    url: str,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    app_env(DATABASE_URL=url)
    status, _, body = health_api("/health/ready")
    assert status == 503
    assert body["checks"]["database"]["status"] == "down"
    assert body["checks"]["database"]["reason"] == "error"
    assert health_api("/health") == (
        503,
        health_api("/health")[1],
        {"status": "error", "db": "disconnected"},
    )
    assert database_down(scrape())
    errors = [x for x in log_lines() if x.get("type") in ("health_check", "metrics_scrape")]
    assert errors and all(x.get("error") for x in errors)  # the cause is in the log
    assert "pw" not in json.dumps([x.get("error") for x in errors])


@pytest.mark.parametrize(
    "password", ["se/cr@et", "p/a/s/s", "pa?ss/word", "pass#word/x", "a:b/c", "x@y@z/w"]
)
def test_a_password_with_unescaped_characters_never_leaks(
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
    closed_port: int,
    password: str,
) -> None:
    app_env(
        DATABASE_URL=f"postgresql://app:{password}@127.0.0.1:{closed_port}/app",
        METRICS_AUTH_TOKEN="t0k",
    )
    auth = {"Authorization": "Bearer t0k"}
    bodies = [health_api(path)[2] for path in PUBLIC]
    bodies.append(health_api("/health/detailed", headers=auth)[2])
    bodies.append(scrape(auth)[1])
    text = json.dumps(bodies) + json.dumps(log_lines())
    for piece in {password, *re.split(r"[/@?#:]", password)} - {""}:
        if len(piece) >= 3:
            assert piece not in text, piece
    # It parsed as a password: the target is the right host, port and database.
    assert f"app@127.0.0.1:{closed_port}/app" in json.dumps(log_lines())


@pytest.mark.parametrize(
    ("secret", "cause"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"host": "h", "password": "pw"}', "lacks the 'username' field"),
        ('{"username": "u", "password": "pw", "host": "h", "port": "x"}', "'port'"),
        ('{"username": "u", "password": "pw", "host": "h", "port": 70000}', "'port'"),
        ('{"username": "u", "password": "pw", "host": "h", "port": "\u00b2"}', "'port'"),
        ('{"username": "u", "password": "pw", "host": "h", "port": true}', "'port'"),
        ('{"username": 5, "password": "pw", "host": "h"}', "'username' field is not a string"),
        ('{"username": "u", "password": null, "host": "h"}', "'password' field is not a string"),
        ('{"username": "u", "password": "pw", "host": "h", "dbname": 5}', "'dbname'"),
    ],
)
def test_a_malformed_database_secret_is_503_with_the_cause_logged(
    secrets_client: Any,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
    secret: str,
    cause: str,
) -> None:
    arn = secrets_client.create_secret(Name="db", SecretString=secret)["ARN"]
    app_env(DB_SECRET_ARN=arn)
    status, _, body = health_api("/health/ready")
    assert status == 503 and body["checks"]["database"]["reason"] == "error"
    assert database_down(scrape())
    errors = [x for x in log_lines() if x.get("type") in ("health_check", "metrics_scrape")]
    assert errors and all(cause in x["error"] for x in errors)
    assert "pw" not in json.dumps(log_lines())


def test_an_unreadable_database_secret_is_503(
    secrets_client: Any,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    app_env(DB_SECRET_ARN="arn:aws:secretsmanager:eu-west-1:000000000000:secret:gone")
    assert health_api("/health/ready")[0] == 503
    assert database_down(scrape())
    failed = [x for x in log_lines() if x.get("type") == "health_check"]
    assert failed and all("cannot read the database secret" in x["error"] for x in failed)


def test_detailed_shows_details_only_behind_a_token(
    health_api: FunctionInvoker, app_env: Callable[..., None], closed_port: int
) -> None:
    app_env(DATABASE_URL=f"postgresql://app_user:pw@127.0.0.1:{closed_port}/bundle_test")
    _, _, body = health_api("/health/detailed")
    assert not LEAKS.search(json.dumps(body))
    _, _, body = health_api("/health/detailed", headers={"Accept": "application/health+json"})
    assert not LEAKS.search(json.dumps(body))
    assert body["checks"]["database:responseTime"][0]["output"] == "refused"

    app_env(METRICS_AUTH_TOKEN="t0k")
    auth = {"Authorization": "Bearer t0k"}
    _, _, body = health_api("/health/detailed", headers=auth)
    assert "app_user@127.0.0.1" in body["checks"]["database"]["error"]
    _, _, body = health_api(
        "/health/detailed", headers={**auth, "Accept": "application/health+json"}
    )
    assert "app_user@127.0.0.1" in body["checks"]["database:responseTime"][0]["output"]
