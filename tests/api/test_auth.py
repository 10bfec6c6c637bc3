"""Fail closed: a configured token source that yields no usable token never opens a route."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.runtime import FunctionInvoker

PROTECTED = ("/health/detailed",)


@pytest.mark.parametrize(
    "secret_value",
    [
        "",
        "   ",
        '{"token": ""}',
        '{"token": "  "}',
        '{"token": null}',
        '{"token": 5}',
        "{}",
        '{"nottoken": "x"}',
        "{not json",
        '{"token": ["a"]}',
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer None", "Bearer 5"])
def test_an_unusable_token_secret_is_503_never_200(
    secrets_client: Any,
    health_api: FunctionInvoker,
    app_env: Callable[..., None],
    log_lines: Callable[[], list[dict[str, Any]]],
    secret_value: str,
    authorization: str | None,
) -> None:
    if secret_value == "":
        # Secrets Manager refuses an empty SecretString; a binary empty secret is the same case.
        arn = secrets_client.create_secret(Name="token", SecretBinary=b" ")["ARN"]
    else:
        arn = secrets_client.create_secret(Name="token", SecretString=secret_value)["ARN"]
    app_env(METRICS_AUTH_TOKEN_SECRET_ARN=arn)
    headers = {"Authorization": authorization} if authorization else {}
    for _ in range(3):
        status, _, body = health_api("/health/detailed", headers=headers)
        assert status == 503, body
        assert body["error"] == "auth_misconfigured"
        assert "METRICS_AUTH_TOKEN_SECRET_ARN" in body["message"]
    logged = [x for x in log_lines() if x.get("message", "").startswith("auth misconfigured")]
    assert len(logged) == 1  # once per container
    if secret_value.strip():
        assert secret_value not in json.dumps(log_lines())


@pytest.mark.parametrize("value", ["   ", "\t"])
def test_a_blank_token_variable_is_503(
    health_api: FunctionInvoker, app_env: Callable[..., None], value: str
) -> None:
    app_env(METRICS_AUTH_TOKEN=value)
    for authorization in (None, "Bearer ", f"Bearer {value}"):
        headers = {"Authorization": authorization} if authorization else {}
        status, _, body = health_api("/health/detailed", headers=headers)
        assert status == 503 and body["error"] == "auth_misconfigured"
        assert "METRICS_AUTH_TOKEN is empty" in body["message"]


def test_an_unreadable_token_secret_is_503(
    secrets_client: Any, health_api: FunctionInvoker, app_env: Callable[..., None]
) -> None:
    app_env(
        METRICS_AUTH_TOKEN_SECRET_ARN="arn:aws:secretsmanager:eu-west-1:000000000000:secret:gone"
    )
    status, _, body = health_api("/health/detailed", headers={"Authorization": "Bearer x"})
    assert status == 503 and body["error"] == "auth_misconfigured"
    assert "cannot be read" in body["message"]


def test_a_json_token_secret_works(
    secrets_client: Any, health_api: FunctionInvoker, app_env: Callable[..., None], db_env: str
) -> None:
    arn = secrets_client.create_secret(Name="token", SecretString='{"token": " t0k "}')["ARN"]
    app_env(METRICS_AUTH_TOKEN_SECRET_ARN=arn)
    assert health_api("/health/detailed", headers={"Authorization": "Bearer t0k"})[0] == 200
    assert health_api("/health/detailed", headers={"Authorization": "Bearer "})[0] == 401


def test_no_token_configured_means_open(health_api: FunctionInvoker, db_env: str) -> None:
    assert health_api("/health/detailed")[0] == 200


@pytest.mark.parametrize("authorization", ["Bearer \udcff", "\ud800", "Bearer t0k\udc80"])
def test_a_lone_surrogate_in_authorization_is_401_not_500(
    health_api: FunctionInvoker, app_env: Callable[..., None], authorization: str
) -> None:
    app_env(METRICS_AUTH_TOKEN="t0k")
    status, _, body = health_api("/health/detailed", headers={"Authorization": authorization})
    assert status == 401 and body["error"] == "unauthorized"
