"""PostgreSQL connections per container, opened lazily, reused, reopened once when stale:
the container's (`get_db`: checks, handlers, the scrape's reads) and the metrics store's
own (`store_db`: flushes), so that neither waits behind the other.

Connection parameters come from `DATABASE_URL` (local, tests) or from the
RDS-managed secret named by `DB_SECRET_ARN` (AWS), with `DB_HOST` pointing at an
RDS Proxy endpoint when set. The metrics store may live in a database of its own
(`METRICS_DATABASE_URL`, or `METRICS_DB_SECRET_ARN` with `METRICS_DB_HOST`; a `Source`
says which settings a handle reads): then `store_db` and `store_reader` connect there,
and `get_db` stays the application's (docs/metrics-database.md).

Every connection carries a socket timeout (a hung server raises instead of hanging) and
every statement a server-side `statement_timeout` (SET LOCAL, so that nothing of it
outlives the transaction on a pooled connection), per use:
the container's handle (health, metrics) keeps the short defaults, a batch job
opens its own `Database` with timeouts sized for its batches, and a transaction
may set its own, with the socket timeout kept above its statement timeout so that
the server cancels a slow statement (a clean error) before the client gives up on
the connection.
"""

from __future__ import annotations

import re
import select
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

import pg8000.native
from pg8000.exceptions import InterfaceError

from ops.config import SSL_MODES, Settings, settings
from ops.sql import server_message, set_local_timeouts, sqlstate

# SQLSTATEs after which the connection is unusable but a fresh one may work:
# admin/crash shutdown, cannot-connect-now, and the whole connection-exception class.
_STALE_CODES = ("57P01", "57P02", "57P03")
_STALE_CLASS = "08"
_AUTH_FAILED = "28P01"


class DatabaseUnavailable(Exception):
    """The database could not be reached or did not answer in time."""


class DatabaseMisconfigured(DatabaseUnavailable):
    """DATABASE_URL or the database secret cannot be used. To callers it is an unreachable
    database (503, never 500); the message says what is wrong and never quotes the value."""


@dataclass(frozen=True)
class ConnectParams:
    user: str
    database: str
    host: str | None = None
    port: int = 5432
    unix_sock: str | None = None
    ssl_mode: str = "disable"
    password: str | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """Where we connect, safe to log (never the password)."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"


@dataclass(frozen=True)
class Source:
    """Which settings name one database: the application's, or the metrics store's."""

    label: str  # what an error message calls it
    url_env: str  # the variable an error message names
    url: str | None = field(repr=False)
    secret_arn: str | None
    host_override: str | None

    @property
    def configured(self) -> bool:
        return bool(self.url or self.secret_arn)


def app_source(cfg: Settings) -> Source:
    """The application's database: DATABASE_URL, else DB_SECRET_ARN (with DB_HOST)."""
    return Source(
        "database", "DATABASE_URL", cfg.database_url, cfg.db_secret_arn, cfg.db_host_override
    )


def separate_store(cfg: Settings | None = None) -> bool:
    """The metrics store has a database of its own (METRICS_DATABASE_URL or
    METRICS_DB_SECRET_ARN is set)."""
    cfg = cfg or settings()
    return bool(cfg.metrics_database_url or cfg.metrics_db_secret_arn)


def store_source(cfg: Settings) -> Source:
    """The metrics store's database: its own when configured, else the application's."""
    if not separate_store(cfg):
        return app_source(cfg)
    return Source(
        "metrics database",
        "METRICS_DATABASE_URL",
        cfg.metrics_database_url,
        cfg.metrics_db_secret_arn,
        cfg.metrics_db_host_override,
    )


_BAD_PORT = "{env} has a port that is not a number from 1 to 65535"
# The libpq query options DATABASE_URL honours; each wins over the URL's own part.
URL_OPTIONS = ("host", "port", "user", "password", "dbname", "sslmode")
# Options libpq knows that a setting (or the bundle) decides here: what to do instead.
_URL_OPTIONS_ELSEWHERE = {
    "application_name": "the application name is set per function",
    "connect_timeout": "set DB_CONNECT_TIMEOUT_S",
    "sslrootcert": "set DB_SSL_ROOT_CERT",
}


def _url_options(query: str, env: str) -> dict[str, str]:
    """The query's options (libpq's: `+` is a plus, the last of a name wins), each known;
    an option is refused by its name, which is quoted only if it looks like one."""
    options: dict[str, str] = {}
    honoured = ", ".join(URL_OPTIONS)
    for pair in filter(None, query.split("&")):
        raw_name, sep, value = pair.partition("=")
        name = unquote(raw_name).lower()
        if not sep or not re.fullmatch(r"[a-z_]{1,40}", name):
            raise DatabaseMisconfigured(
                f"{env} has an option that is not a libpq option name (honoured: {honoured})"
            )
        if name not in URL_OPTIONS:
            why = _URL_OPTIONS_ELSEWHERE.get(name, f"not supported (honoured: {honoured})")
            raise DatabaseMisconfigured(f"{env} option {name!r} is not used: {why}")
        options[name] = unquote(value)
    return options


def parse_database_url(url: str, env: str = "DATABASE_URL") -> ConnectParams:
    """`postgresql://user:pass@host:port/db?option=value`, libpq's URI form, where the options
    `host` (a directory for a Unix socket), `port`, `user`, `password`, `dbname` and
    `sslmode` win over the URL's parts; any other option is refused by name.

    The user info ends at the last '@': a password with an unescaped '/', '?', '#' or '@'
    still parses, and no part of it can end up in the host, database or an error message.
    Errors name `env`, the variable the URL came from.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgres", "postgresql"):
        raise DatabaseMisconfigured(f"{env} must start with postgresql:// or postgres://")
    userinfo, _, location = rest.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    try:
        parts = urlsplit("postgresql://" + location)  # no credentials left in what is parsed
        url_port = parts.port
    except ValueError:  # an unclosed IPv6 bracket, a bad port; its message would quote the host
        raise DatabaseMisconfigured(f"{env} has a malformed host or port") from None
    options = _url_options(parts.query, env)
    if has_password and "password" in options:
        raise DatabaseMisconfigured(
            f"{env} has a password both before the '@' and in ?password=; keep one"
        )
    try:
        port = int(options["port"]) if "port" in options else url_port or 5432
    except ValueError:
        raise DatabaseMisconfigured(_BAD_PORT.format(env=env)) from None
    if not 0 < port < 65536:
        raise DatabaseMisconfigured(_BAD_PORT.format(env=env))
    ssl_mode = options.get("sslmode", "disable").lower()
    if ssl_mode not in SSL_MODES:  # as DB_SSL_MODE is checked (the value is not repeated)
        raise DatabaseMisconfigured(f"{env}'s sslmode must be one of {', '.join(SSL_MODES)}")
    host = options.get("host") or parts.hostname
    unix_sock = None
    if host and host.startswith("/"):
        unix_sock, host = f"{host}/.s.PGSQL.{port}", None
    database = options.get("dbname") or unquote(parts.path.lstrip("/")) or "postgres"
    if "password" in options:
        secret: str | None = options["password"]
    else:
        secret = unquote(password) if password else None
    return ConnectParams(
        user=options.get("user") or unquote(user) or "postgres",
        password=secret,
        host=host or ("localhost" if unix_sock is None else None),
        port=port,
        unix_sock=unix_sock,
        database=database,
        ssl_mode=ssl_mode,
    )


def params_from_secret(
    secret: dict[str, Any], cfg: Settings, host_override: str | None = None
) -> ConnectParams:
    """The RDS-managed secret's JSON (host, port, username, password, dbname);
    `host_override` (DB_HOST, METRICS_DB_HOST) replaces its host."""
    for name in ("username", "password", "host"):
        if name == "host" and host_override:
            continue
        if name not in secret:
            raise DatabaseMisconfigured(f"database secret lacks the {name!r} field")
        if not isinstance(secret[name], str) or not secret[name]:
            raise DatabaseMisconfigured(f"database secret's {name!r} field is not a string")
    database = secret.get("dbname") or secret.get("database") or "postgres"
    if not isinstance(database, str):
        raise DatabaseMisconfigured("database secret's 'dbname' field is not a string")
    port = secret.get("port", 5432)
    # ASCII digits only: str.isdigit() accepts '²', which int() then refuses.
    digits = str(port) if isinstance(port, (int, str)) and not isinstance(port, bool) else ""
    if not re.fullmatch(r"[0-9]{1,5}", digits) or not 0 < int(digits) < 65536:
        raise DatabaseMisconfigured("database secret's 'port' is not a number from 1 to 65535")
    return ConnectParams(
        user=secret["username"],
        password=secret["password"],
        host=host_override or secret["host"],
        port=int(digits),
        database=database,
        ssl_mode=cfg.db_ssl_mode or "require",
    )


def resolve_params(
    cfg: Settings, *, force_fetch: bool = False, source: Source | None = None
) -> ConnectParams:
    """Where `source` (default: the application's database) says to connect; DB_SSL_MODE
    and DB_SSL_ROOT_CERT apply to either database."""
    src = source or app_source(cfg)
    if src.url:
        params = parse_database_url(src.url, src.url_env)
        if cfg.db_ssl_mode:
            params = ConnectParams(**{**params.__dict__, "ssl_mode": cfg.db_ssl_mode})
        return params
    if src.secret_arn:
        from ops.secretstore import get_secret_json  # boto3: only with a secret

        try:
            secret = get_secret_json(src.secret_arn, force_fetch=force_fetch)
        except ValueError as exc:  # not JSON, not an object: says so without the content
            raise DatabaseMisconfigured(str(exc)) from None
        except Exception as exc:  # Secrets Manager unreachable, secret missing, no permission
            raise DatabaseUnavailable(
                f"cannot read the {src.label} secret ({type(exc).__name__})"
            ) from None
        return params_from_secret(secret, cfg, src.host_override)
    raise DatabaseUnavailable("no database configured: set DATABASE_URL or DB_SECRET_ARN")


_ssl_contexts: dict[tuple[str, str | None], Any] = {}


def _ssl_context(mode: str, root_cert: str | None) -> Any:
    """False for plaintext; otherwise one context per container (building one costs ~28 ms)."""
    if mode in ("disable", "allow", "prefer", ""):
        return False
    key = (mode, root_cert)
    if key not in _ssl_contexts:
        import ssl

        ctx = ssl.create_default_context(cafile=root_cert)
        if mode == "require":  # encrypted, not verified (libpq's meaning of sslmode=require)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif mode == "verify-ca":
            ctx.check_hostname = False
        _ssl_contexts[key] = ctx
    return _ssl_contexts[key]


def is_stale_error(exc: BaseException) -> bool:
    """True when the connection itself is broken (so a new one may succeed)."""
    if isinstance(exc, (InterfaceError, OSError)):
        return True
    code = sqlstate(exc)
    return code in _STALE_CODES or code.startswith(_STALE_CLASS)


def is_auth_failure(exc: BaseException | None) -> bool:
    """The server refused the password (perhaps rotated since it was read)."""
    return sqlstate(exc) == _AUTH_FAILED


def open_connection(
    params: ConnectParams,
    cfg: Settings,
    *,
    timeout_s: float | None = None,
    app: str = "ops",
    statement_timeout_ms: int | None = None,
) -> pg8000.native.Connection:
    """A new connection with a socket timeout.

    No startup parameter but `application_name` unless `statement_timeout_ms` is given
    (tools connecting straight to PostgreSQL): connection poolers in transaction mode
    (PgBouncer, RDS Proxy) refuse or pin on others, so the container's connections
    (`Database`) bound their statements with `SET LOCAL` instead, per transaction.
    """
    startup = (
        {} if statement_timeout_ms is None else {"statement_timeout": str(statement_timeout_ms)}
    )
    try:
        return pg8000.native.Connection(
            user=params.user,
            password=params.password,
            host=params.host or "localhost",
            port=params.port,
            unix_sock=params.unix_sock,
            database=params.database,
            ssl_context=_ssl_context(params.ssl_mode, cfg.db_ssl_root_cert),
            timeout=timeout_s or cfg.db_connect_timeout_s,
            application_name=app,
            startup_params=startup,
        )
    except Exception as exc:  # any failure to open one (refused, DNS, TLS, a bad host name)
        reason = connect_failure_reason(exc, timeout_s or cfg.db_connect_timeout_s)
        raise DatabaseUnavailable(f"cannot connect to {params.target}: {reason}") from exc


def connect_failure_reason(exc: BaseException, timeout_s: float) -> str:
    """Why a connect failed, in words an operator acts on: pg8000's own message says
    "timeout is N" even for a connection refused at once."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
        if isinstance(err, TimeoutError):
            return f"timed out after {timeout_s:g} s (the server did not answer)"
        if isinstance(err, socket.gaierror):
            return f"unknown host ({err.strerror or err})"
        if said := server_message(err):
            return said
    return str(exc)


def connect_url(
    url: str,
    *,
    timeout_s: float | None = None,
    statement_timeout_ms: int | None = None,
    app: str = "ops",
) -> pg8000.native.Connection:
    """A connection of its own to `url` (tools, migrations, tests), outside the container's."""
    return open_connection(
        parse_database_url(url),
        settings(),
        timeout_s=timeout_s,
        statement_timeout_ms=statement_timeout_ms,
        app=app,
    )


def _closed_by_peer(conn: pg8000.native.Connection) -> bool:
    """An idle connection has nothing to read: readable means the server closed it (EOF)
    or said why it is about to (an admin shutdown's FATAL). A select, no round trip."""
    try:
        readable, _, _ = select.select([conn._usock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Database:
    """Lazily opened, reused connection. Not shared across threads concurrently:
    a Lambda container serves one invocation at a time."""

    def __init__(
        self,
        cfg: Settings | None = None,
        application_name: str = "ops",
        *,
        socket_timeout_s: float | None = None,
        statement_timeout_ms: int | None = None,
        source: Callable[[Settings], Source] = app_source,
    ) -> None:
        self._cfg = cfg
        self._application_name = application_name
        self._source = source  # which database: the application's (default) or the store's
        # None: the settings' DB_CONNECT_TIMEOUT_S / DB_STATEMENT_TIMEOUT_MS.
        self._socket_timeout_s = socket_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._conn: pg8000.native.Connection | None = None
        self._lock = threading.RLock()  # run() may be called inside transaction()
        self._discards = 0  # a run() whose connection another thread dropped must not retry
        self._in_transaction = False  # run() inside transaction(): its timeouts apply

    @property
    def cfg(self) -> Settings:
        return self._cfg or settings()

    @property
    def statement_timeout_ms(self) -> int:
        """The server-side bound of every statement not given its own (SET LOCAL)."""
        return self._statement_timeout_ms or self.cfg.db_statement_timeout_ms

    def _connect(self, *, timeout_s: float | None = None) -> pg8000.native.Connection:
        cfg = self.cfg
        source = self._source(cfg)
        params = resolve_params(cfg, source=source)
        connect = partial(
            open_connection,
            timeout_s=timeout_s or self._socket_timeout_s,
            app=self._application_name,
        )
        try:
            return connect(params, cfg)
        except DatabaseUnavailable as exc:
            # A rotated secret: fetch it again once, bypassing the cache.
            if not (source.secret_arn and is_auth_failure(exc.__cause__)):
                raise
        params = resolve_params(cfg, force_fetch=True, source=source)
        return connect(params, cfg)

    def connection(
        self, *, timeout_s: float | None = None, check_alive: bool = False
    ) -> pg8000.native.Connection:
        """The kept connection, opened if there is none. `check_alive` first drops a kept
        connection the server has closed or is closing (see `_closed_by_peer`), so that a
        caller knows a failure to connect means nothing was sent."""
        if self._conn is not None and check_alive and _closed_by_peer(self._conn):
            self.discard()
        if self._conn is None:
            self._conn = self._connect(timeout_s=timeout_s)
        return self._conn

    def discard(self) -> None:
        """Drop the connection; safe to call from another thread to unblock a hung read."""
        conn, self._conn = self._conn, None
        self._discards += 1
        if conn is not None:
            # No terminate message: the server may be the thing that hangs. shutdown()
            # wakes a thread blocked reading it (close() alone does not, on Linux).
            with suppress(Exception):
                conn._usock.shutdown(socket.SHUT_RDWR)
            with suppress(Exception):
                conn._usock.close()

    def run(self, sql: str, *, timeout_s: float | None = None, **params: Any) -> list[list[Any]]:
        """Run one statement; on a stale connection reconnect once and retry.

        Retrying is safe because a stale connection fails before the server runs
        the statement (the socket is dead or the server said it is shutting down).
        """
        with self._lock:
            reused = self._conn is not None
            discards = self._discards
            try:
                return self._bounded(self.connection(timeout_s=timeout_s), sql, params)
            except Exception as exc:
                if not is_stale_error(exc):
                    raise
                abandoned = self._discards != discards  # a caller gave up on this statement
                self.discard()
                if abandoned or not reused:
                    raise DatabaseUnavailable(str(exc)) from exc
            try:
                return self._bounded(self.connection(timeout_s=timeout_s), sql, params)
            except Exception as exc:
                if is_stale_error(exc):
                    self.discard()
                    raise DatabaseUnavailable(str(exc)) from exc
                raise

    def _bounded(
        self, conn: pg8000.native.Connection, sql: str, params: dict[str, Any]
    ) -> list[list[Any]]:
        """`sql` in a transaction of its own that carries the statement timeout (SET LOCAL:
        nothing outlives it on a pooled server connection); inside transaction(), as is.

        Without parameters that is one round trip (a multi-statement query is one implicit
        transaction). pg8000 sends a parameterised statement in three messages, each ended
        by a Sync: outside an explicit transaction a pooler in transaction mode may hand
        each to another server connection, so those get BEGIN ... COMMIT around them.
        """
        if self._in_transaction:
            rows: list[list[Any]] = conn.run(sql, **params)
            return rows
        bound = set_local_timeouts(statement_timeout_ms=self.statement_timeout_ms)
        if not params:
            rows = conn.run(f"{bound}; {sql}")
            return rows
        conn.run(f"BEGIN; {bound}")
        try:
            rows = conn.run(sql, **params)
            conn.run("COMMIT")
        except BaseException:
            with suppress(Exception):
                conn.run("ROLLBACK")
            raise
        return rows

    @contextmanager
    def transaction(
        self, *, statement_timeout_ms: int | None = None, lock_timeout_ms: int | None = None
    ) -> Iterator[pg8000.native.Connection]:
        """BEGIN ... COMMIT on the shared connection; ROLLBACK (or discard) on error.

        The timeouts apply to this transaction only (SET LOCAL, sent with BEGIN in one
        round trip; the statement timeout defaults to the handle's); while it runs, the
        socket waits at least `DB_CONNECT_TIMEOUT_S` longer than its statement timeout. No
        retry here: a transaction that failed midway is the caller's decision.
        """
        timeouts = set_local_timeouts(
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms or self.statement_timeout_ms,
        )
        begin = f"BEGIN; {timeouts}"
        with self._lock:
            reused = self._conn is not None
            try:
                conn = self.connection()
                conn.run(begin)
            except Exception as exc:
                if not (reused and is_stale_error(exc)):
                    raise
                self.discard()  # the kept connection was stale: one fresh attempt
                conn = self.connection()
                conn.run(begin)
            restore = self._outwait(conn, statement_timeout_ms)
            self._in_transaction = True
            try:
                yield conn
                conn.run("COMMIT")
            except BaseException as exc:
                if is_stale_error(exc):
                    self.discard()
                else:
                    try:
                        conn.run("ROLLBACK")
                    except Exception:
                        self.discard()
                raise
            finally:
                self._in_transaction = False
                still_ours = self._conn is conn  # not discarded meanwhile
                if restore is not None and still_ours:
                    with suppress(Exception):
                        conn._usock.settimeout(restore)

    def _outwait(self, conn: pg8000.native.Connection, statement_timeout_ms: int | None) -> Any:
        """Raise the socket timeout above a statement timeout longer than the connection's;
        returns the timeout to restore afterwards (None: nothing changed)."""
        if statement_timeout_ms is None:
            return None
        needed = statement_timeout_ms / 1000 + self.cfg.db_connect_timeout_s
        current = conn._usock.gettimeout()
        if current is None or current >= needed:
            return None
        conn._usock.settimeout(needed)
        return current

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                conn.close()


_default: Database | None = None
_store: Database | None = None
_reader: Database | None = None


def get_db() -> Database:
    """The container's database handle: health checks, the scrape's reads, handlers."""
    global _default
    if _default is None:
        _default = Database(application_name=settings().service)
    return _default


def store_db() -> Database:
    """The metrics store's own handle (ops.metrics.store's flushes, on the outbox's flush thread):
    a connection of its own (`application_name` `<service>-metrics`), so that a check or
    handler never waits behind the container's own flush, nor a flush behind them. On the
    metrics database when one is configured (`separate_store`)."""
    global _store
    if _store is None:
        _store = Database(application_name=f"{settings().service}-metrics", source=store_source)
    return _store


def store_reader() -> Database:
    """The scrape's reads of the store (totals, compaction): the container's own handle
    when the store is the application's database (one connection, as before), else a
    handle of its own on the metrics database (`<service>-metrics-read`), so that the
    scrape reads it while the application's database is checked, and never behind a flush."""
    global _reader
    if not separate_store():
        return get_db()
    if _reader is None:
        name = f"{settings().service}-metrics-read"
        _reader = Database(application_name=name, source=store_source)
    return _reader


def reset() -> None:
    """Forget the container's connections (tests; a new environment)."""
    global _default, _store, _reader
    for handle in (_default, _store, _reader):
        if handle is not None:
            handle.close()
    _default = _store = _reader = None
