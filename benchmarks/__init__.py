"""Reproducible benchmarks. `make bench` (or `python -m benchmarks [suite ...]`).

Each suite is a module `benchmarks/suite_<name>.py` with

    def run(quick: bool) -> str   # Markdown: the plan, numbers, ratios, targets

Every suite measures its baseline in the same run and reports ratios, because
these machines are shared and noisy. The harness adds the machine load and the suite
time, and writes each suite's section into benchmarks/README.md between
`<!-- suite:<name> -->` markers, so suites can be re-run one at a time without losing
the others' latest results. What a suite compares and how (prose that does not change
from run to run) is written once in the README, above its markers.
"""
