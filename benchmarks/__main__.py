"""Run benchmark suites and record their results in benchmarks/README.md."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

from tools.cli import run

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"


def suites() -> list[str]:
    return sorted(p.stem.removeprefix("suite_") for p in HERE.glob("suite_*.py"))


def record(name: str, section: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    start, end = f"<!-- suite:{name} -->", f"<!-- /suite:{name} -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (
        f"{start}\n{section.strip()}\n\n"
        f"_Recorded {stamp} on {platform.machine()}, Python {platform.python_version()}, "
        f"command: `make bench SUITES={name}`._\n{end}"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{block}\n"
    )
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"default: all of {suites()}")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.suites) - set(suites()))
    if unknown:
        parser.error(f"no suite {', '.join(unknown)}; one of: {', '.join(suites())}")
    return run("bench", lambda: _run_suites(args.suites or suites(), args.quick, args.no_record))


def _run_suites(names: list[str], quick: bool, no_record: bool) -> int:
    from ops.config import settings
    from tests.support.runtime import reset_runtime

    settings()  # a bad setting is two lines before minutes of work, not a traceback in it
    for name in names:
        module = importlib.import_module(f"benchmarks.suite_{name}")
        print(f"== {name}", flush=True)
        load, began, saved = os.getloadavg(), time.monotonic(), dict(os.environ)
        try:
            section = module.run(quick)
        finally:  # a suite's settings (DATABASE_URL, ...) and connections end with it
            os.environ.clear()
            os.environ.update(saved)
            reset_runtime()
        section += (
            f"\n\nMachine load (`uptime`, 1/5/15 min) {load[0]:.2f} / {load[1]:.2f} / "
            f"{load[2]:.2f} at the start, {os.getloadavg()[0]:.2f} (1 min) at the end; "
            f"{os.cpu_count()} CPUs shared with other work; suite time "
            f"{time.monotonic() - began:.0f} s{' (`--quick`: fewer rounds)' if quick else ''}."
        )
        print(section, flush=True)
        if not no_record:
            record(name, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
