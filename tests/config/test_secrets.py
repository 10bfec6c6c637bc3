"""Credentials from Secrets Manager (moto): fetched once, cached, re-fetched on rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import ANY

import pytest

from tests.support.db import SQL
from tests.support.runtime import FunctionInvoker
from tools import PYTHONPATH
from tools.localdb.pgcluster import PgCluster


@pytest.fixture
def app_role(pg_cluster: PgCluster, database_url: str, sql: SQL) -> Iterator[str]:
    """A login role with a password, as an RDS-managed secret describes."""
    sql("DROP ROLE IF EXISTS app_user")
    sql("CREATE ROLE app_user LOGIN PASSWORD 'first-password'")
    yield "app_user"
    sql("DROP ROLE IF EXISTS app_user")


def rds_secret(cluster: PgCluster, password: str) -> str:
    return json.dumps(
        {
            "engine": "postgres",
            "host": "127.0.0.1",
            "port": cluster.port,
            "username": "app_user",
            "password": password,
            "dbname": "bundle_test",
        }
    )


def count_calls(client: Any) -> list[str]:
    """The GetSecretValue calls a boto3 client (untyped: no stubs here) makes from now on."""
    calls: list[str] = []
    client.meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **_: calls.append("get")
    )
    return calls


def test_health_with_credentials_from_secrets_manager_is_cached(
    secrets_client: Any,
    app_role: str,
    pg_cluster: PgCluster,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
) -> None:
    arn = secrets_client.create_secret(
        Name="rds!db-1", SecretString=rds_secret(pg_cluster, "first-password")
    )["ARN"]
    app_env(DB_SECRET_ARN=arn, DB_SSL_MODE="disable")

    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    assert health_api("/health")[0] == 200
    provider_client = DEFAULT_PROVIDERS["secrets"].client
    calls = count_calls(provider_client)

    from ops import db

    for _ in range(3):  # new connections (as after a stale one) reuse the cached secret
        db.reset()
        assert health_api("/health")[0] == 200
    assert calls == []


def test_rotated_password_is_fetched_again_once(
    secrets_client: Any,
    app_role: str,
    pg_cluster: PgCluster,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    sql: SQL,
) -> None:
    arn = secrets_client.create_secret(
        Name="rds!db-2", SecretString=rds_secret(pg_cluster, "first-password")
    )["ARN"]
    app_env(DB_SECRET_ARN=arn, DB_SSL_MODE="disable")
    assert health_api("/health")[0] == 200

    # Rotation: the database and the secret change; the container still caches the old one.
    sql("ALTER ROLE app_user PASSWORD 'second-password'")
    secrets_client.put_secret_value(
        SecretId=arn, SecretString=rds_secret(pg_cluster, "second-password")
    )
    from ops import db

    db.reset()
    assert health_api("/health")[0] == 200


def test_malformed_secret_is_a_clear_503(
    secrets_client: Any,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    arn = secrets_client.create_secret(Name="broken", SecretString="not json")["ARN"]
    app_env(DB_SECRET_ARN=arn)
    status, _, body = health_api("/health/ready")
    assert status == 503
    assert body["checks"]["database"] == {"status": "down", "reason": "error", "latencyMs": ANY}
    (failed,) = [x for x in log_lines() if x.get("type") == "health_check"]
    assert "is not JSON" in failed["error"]  # the cause, in the log
    assert "not json" not in json.dumps(log_lines())  # the secret's content is never logged


def test_boto3_is_not_imported_when_database_url_is_used(db_env: str) -> None:
    """A cold start with DATABASE_URL must not pay for boto3 (~200 ms)."""
    probe = """
import json, sys
from tools.runtime.apigw import proxy_event
from tools.runtime.handler import LambdaContext
from health import app
resp = app.lambda_handler(proxy_event(method="GET", path="/health", resource="/health"),
                          LambdaContext("health", 5))
# Powertools' package init imports bare `botocore` (<1 ms) for its user agent; the
# expensive parts are boto3 and botocore's client machinery.
print(json.dumps({"status": resp["statusCode"], "boto3": "boto3" in sys.modules,
                  "botocore.client": "botocore.client" in sys.modules}))
"""
    out = (
        subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": PYTHONPATH},
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert json.loads(out) == {"status": 200, "boto3": False, "botocore.client": False}
