"""`make run`: database (embedded unless DATABASE_URL), migrations, demo data, local gateway.

    python -m tools.serve [--port 3000] [--no-demo]

Ctrl-C (or SIGTERM) stops the gateway, its workers and the embedded database.
"""

from __future__ import annotations

import argparse
import os
import sys

from ops.config import Settings, settings
from tools.cli import ToolError, ignore_further_interrupts, run
from tools.gateway import Gateway, make_server
from tools.localdb import local_database, port_is_free


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=_port, help="default: PORT, else 3000")
    parser.add_argument("--no-demo", action="store_true", help="do not load demo rows")
    args = parser.parse_args(argv)
    # Settings are read inside `run`, so that a bad one (PORT=abc too) is its two lines.
    return run("run", lambda: serve(args.port or settings().local_port, demo=not args.no_demo))


def _port(text: str) -> int:
    """--port, or PORT: argparse reports a bad one in its two lines, exit 2."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"PORT/--port must be 1..65535, got {text!r}")
    return port


def serve(port: int, *, demo: bool) -> int:
    from ops.db import parse_database_url
    from tools.migrate import apply_url, migrate_metrics_database

    if not port_is_free(port):  # say so before starting the database, not after
        raise _port_taken(port, "Address already in use")
    with local_database() as (url, cluster):
        migrated = apply_url(url)
        target = parse_database_url(url).target
        print(
            f"database: {target} ({'embedded' if cluster else 'DATABASE_URL'}); "
            f"migrations {migrated.summary()}",
            flush=True,
        )
        metrics = migrate_metrics_database()  # METRICS_DATABASE_URL: the store's own database
        if metrics is not None:
            print(f"metrics database: {metrics[1]}; migrations {metrics[0].summary()}", flush=True)
        if demo:
            _load_demo(url)

        gateway = Gateway(env=worker_env(url))
        try:
            server = make_server(gateway, port=port)
        except OSError as exc:
            raise _port_taken(port, exc.strerror or str(exc)) from None
        print(f"gateway: http://127.0.0.1:{port}", flush=True)
        print(f"  /metrics and /health/detailed: {protection(settings())}", flush=True)
        for path, methods in sorted(gateway.routes.items()):
            print(f"  {','.join(sorted(methods))} {path}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (tools.cli turns it into this)
            ignore_further_interrupts()
            print("stopping", flush=True)
        finally:
            server.server_close()
            gateway.close()
    return 0


def protection(cfg: Settings) -> str:
    """Whether the token-protected routes are open, as the startup banner says it."""
    if cfg.metrics_token is not None:
        if not cfg.metrics_token.strip():
            return "503 auth_misconfigured (METRICS_AUTH_TOKEN is blank)"
        return "token-protected (METRICS_AUTH_TOKEN; curl -H 'Authorization: Bearer …')"
    if cfg.metrics_token_secret_arn is not None:
        return "token-protected (the secret METRICS_AUTH_TOKEN_SECRET_ARN)"
    return "open, no token (set METRICS_AUTH_TOKEN to protect them, as in AWS)"


def worker_env(url: str) -> dict[str, str]:
    """What the gateway adds to its workers' environment (template.yaml's comes first)."""
    env = {"DATABASE_URL": url, "DB_SSL_MODE": os.environ.get("DB_SSL_MODE", "")}
    if "METRICS_NEW_SERIES_HOLD_S" not in os.environ:
        # `make prom` scrapes this gateway every local scrape interval: a new series reads 0
        # for that long (README, Metrics), not for the hold sized for the AWS stage's scrapes.
        from tools.prom import scrape_interval_s

        env["METRICS_NEW_SERIES_HOLD_S"] = f"{scrape_interval_s():g}"
    return {k: v for k, v in env.items() if v}


def _port_taken(port: int, why: str) -> ToolError:
    return ToolError(
        f"cannot listen on 127.0.0.1:{port}: {why}",
        "Another `make run`? Stop it, or pick another port: make run PORT=3001",
    )


def _load_demo(url: str) -> None:
    from ops.db import connect_url
    from tools.demo import load_demo

    conn = connect_url(url, timeout_s=10)
    try:
        if load_demo(conn):
            print("demo data loaded", flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
