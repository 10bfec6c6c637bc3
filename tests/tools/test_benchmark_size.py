"""The benchmarks stay a small share of the code and use the tests' harness (issue 24).

Non-test code: every Python file of the project (tracked, or new and not ignored by
git) outside `tests/`. The virtualenvs, caches and `.aws-sam` are ignored by git, so
they are not counted; `benchmarks/peer_fastapi/` (the FastAPI peer the health suite
measures against) is benchmark code and counts as such.
"""

from __future__ import annotations

import re

from tests.support.import_graph import tracked_python_files
from tools import ROOT

SUITE_LIMIT = 400  # lines, for any module under benchmarks/
SHARE_LIMIT = 0.20  # of the non-test code


def _lines(path: str) -> int:
    return len((ROOT / path).read_text().splitlines())


def _non_test() -> dict[str, int]:
    return {p: _lines(p) for p in tracked_python_files() if not p.startswith("tests/")}


def _benchmarks(sizes: dict[str, int]) -> dict[str, int]:
    return {p: n for p, n in sizes.items() if p.startswith("benchmarks/")}


def test_no_benchmark_module_is_over_the_limit() -> None:
    sizes = _benchmarks(_non_test())
    assert "benchmarks/suite_health.py" in sizes  # the listing found the suites
    over = {p: n for p, n in sizes.items() if n > SUITE_LIMIT}
    assert not over, f"over {SUITE_LIMIT} lines (split it, or move a one-off out): {over}"


def test_benchmarks_are_at_most_a_fifth_of_the_non_test_code() -> None:
    sizes = _non_test()
    bench = {p: n for p, n in _benchmarks(sizes).items()}
    rest = sum(n for p, n in sizes.items() if p not in bench)
    share = sum(bench.values()) / (sum(bench.values()) + rest)
    assert share <= SHARE_LIMIT, (
        f"benchmarks/ is {share:.1%} of the non-test code ({sum(bench.values())} of "
        f"{sum(bench.values()) + rest} lines), limit {SHARE_LIMIT:.0%}"
    )


def test_suites_start_postgresql_through_the_tests_helpers() -> None:
    """One way to a throwaway cluster: tools.pgcluster.running_cluster, as the tests' fixtures."""
    by_hand = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "benchmarks").rglob("*.py"))
        if re.search(r"\bPgCluster\(|\binitdb\b|\bpg_ctl\b", p.read_text())
    ]
    assert not by_hand, f"start PostgreSQL with running_cluster instead: {by_hand}"
