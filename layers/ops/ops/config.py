"""Settings read from the environment once per container.

`settings()` is cached: Lambda environments do not change inside a container.
Tests that vary the environment call `settings.cache_clear()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from ops import __version__

DEFAULT_SERVICE = "realestate-backend"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def env_int(name: str, default: int, *, low: int = 1, high: int | None = None) -> int:
    """A whole number from the environment (`default` when unset), within [low, high].

    Every tuning knob of the bundle is read this way, so a typo fails with one kind of
    clear message instead of a traceback from int() or a silently odd value.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value: int | None = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        if high is not None:
            expected = f"a whole number from {low} to {high}"
        else:
            expected = "a positive whole number" if low == 1 else f"a whole number from {low} up"
        raise ValueError(f"{name} must be {expected}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    service: str
    version: str
    environment: str
    database_url: str | None
    db_secret_arn: str | None
    db_host_override: str | None
    db_ssl_mode: str
    db_ssl_root_cert: str | None
    db_connect_timeout_s: float
    db_statement_timeout_ms: int
    metrics_token: str | None
    metrics_token_secret_arn: str | None
    health_db_budget_s: float
    health_http_budget_s: float
    moltbot_gateway_url: str | None

    @property
    def auth_configured(self) -> bool:
        return bool(self.metrics_token or self.metrics_token_secret_arn)


@lru_cache(maxsize=1)
def settings() -> Settings:
    env = os.environ.get
    return Settings(
        service=env("POWERTOOLS_SERVICE_NAME") or DEFAULT_SERVICE,
        version=env("SERVICE_VERSION") or __version__,
        environment=env("ENVIRONMENT") or "local",
        database_url=env("DATABASE_URL") or None,
        db_secret_arn=env("DB_SECRET_ARN") or None,
        db_host_override=env("DB_HOST") or None,
        db_ssl_mode=(env("DB_SSL_MODE") or "").lower(),
        db_ssl_root_cert=env("DB_SSL_ROOT_CERT") or None,
        db_connect_timeout_s=_env_float("DB_CONNECT_TIMEOUT_S", 2.0),
        db_statement_timeout_ms=int(_env_float("DB_STATEMENT_TIMEOUT_MS", 5000)),
        metrics_token=env("METRICS_AUTH_TOKEN") or None,
        metrics_token_secret_arn=env("METRICS_AUTH_TOKEN_SECRET_ARN") or None,
        health_db_budget_s=_env_float("HEALTH_DB_TIMEOUT_S", 2.0),
        health_http_budget_s=_env_float("HEALTH_HTTP_TIMEOUT_S", 2.0),
        moltbot_gateway_url=(env("MOLTBOT_GATEWAY_URL") or "").rstrip("/") or None,
    )
