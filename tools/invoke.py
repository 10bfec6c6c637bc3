"""Invoke one function with an event file, like `sam local invoke` without Docker.

    python -m tools.invoke RetentionFunction --event events/retention-scheduler.json
    python -m tools.invoke HealthFunction --event events/health.json

Uses DATABASE_URL when set, else the embedded database that `make run` uses.
Prints the handler's return value as JSON on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function", help="logical id in template.yaml, e.g. HealthFunction")
    parser.add_argument("--event", "-e", type=Path, help="event JSON file (default: {})")
    args = parser.parse_args(argv)

    from tools.runtime import LambdaContext, functions, load_handler

    specs = functions()
    spec = specs.get(args.function)
    if spec is None:
        parser.error(f"unknown function {args.function!r}; one of: {', '.join(sorted(specs))}")
    event = json.loads(args.event.read_text()) if args.event else {}

    cluster = None
    if not os.environ.get("DATABASE_URL"):
        from tools.localdb import ensure_database
        from tools.migrate import apply_url

        url, cluster = ensure_database()
        apply_url(url)
        os.environ["DATABASE_URL"] = url
    for key, value in spec.environment.items():
        os.environ.setdefault(key, value)
    from ops.config import settings

    settings.cache_clear()  # a container starts here: read the environment just set

    # Logs to stderr; only the result goes to stdout.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        handler = load_handler(spec.code_dir, spec.handler)
        result = handler(event, LambdaContext(spec.logical_id, spec.timeout_s, spec.memory_mb))
    finally:
        sys.stdout = real_stdout
        if cluster is not None:
            cluster.stop()
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
