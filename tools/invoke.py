"""Invoke one function with an event file, like `sam local invoke` without Docker.

    python -m tools.invoke RetentionFunction --event events/retention-dry-run.json
    python -m tools.invoke HealthFunction --event events/health.json

Uses DATABASE_URL when set, else the embedded database that `make run` uses (started
for the call and stopped after it when `make run` is not running), with the migrations
applied. Prints the handler's return value as JSON on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.cli import ToolError, database_hint, first_line, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("function", help="logical id in template.yaml, e.g. HealthFunction")
    parser.add_argument("--event", "-e", type=Path, help="event JSON file (default: {})")
    args = parser.parse_args(argv)

    from tools.runtime import functions

    specs = functions()
    spec = specs.get(args.function)
    if spec is None:
        parser.error(f"unknown function {args.function!r}; one of: {', '.join(sorted(specs))}")
    return run("invoke", lambda: _invoke(spec, read_event(args.event)))


def read_event(path: Path | None) -> Any:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        examples = ", ".join(sorted(p.name for p in (ROOT / "events").glob("*.json")))
        raise ToolError(f"no event file {path}", f"Sample events in events/: {examples}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"cannot read event file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ToolError(f"event file {path} is not JSON: {exc}") from None


def _invoke(spec: Any, event: Any) -> int:
    from ops.db import DatabaseUnavailable
    from tools.localdb import local_database
    from tools.migrate import apply_url, migrate_metrics_database
    from tools.runtime import LambdaContext, load_handler, local_emf_default

    # The template's settings first, then the database: the handler reads them together.
    for key, value in spec.environment.items():
        os.environ.setdefault(key, value)
    local_emf_default(os.environ)
    with local_database() as (url, _):
        os.environ["DATABASE_URL"] = url
        from ops.config import settings

        settings.cache_clear()  # a container starts here: read the environment just set
        unmigrated = ""
        try:
            apply_url(url)
            migrate_metrics_database()  # METRICS_DATABASE_URL: the store's own database
        except DatabaseUnavailable as exc:
            # Invoke anyway: how a function behaves with its database down is worth seeing.
            unmigrated = first_line(exc)
        # Logs to stderr; only the result goes to stdout.
        real_stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            handler = load_handler(spec.code_dir, spec.handler)
            context = LambdaContext(spec.logical_id, spec.timeout_s, spec.memory_mb)
            result = handler(event, context)
        except Exception as exc:  # Lambda would report it as the invocation's error
            hint = "Its log lines above say more (type=error, or type=job status=failed)."
            raise ToolError(
                f"{spec.logical_id} failed: {type(exc).__name__}: {first_line(exc)}",
                database_hint() if isinstance(exc, DatabaseUnavailable) else hint,
            ) from None
        finally:
            from ops.metrics.process_hooks import flush_at_shutdown

            flush_at_shutdown()  # while the local database is still up
            sys.stdout = real_stdout
    print(json.dumps(result, indent=2, default=str))
    if unmigrated:
        print(f"invoke: migrations not applied: {unmigrated}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
