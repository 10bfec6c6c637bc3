"""Every module ARCHITECTURE.md names exists: its `.py` files and its `ops.` names
(a rename that forgets the map fails here, not in a newcomer's first hour)."""

from __future__ import annotations

import importlib
import re

from tools import ROOT

DOC = (ROOT / "ARCHITECTURE.md").read_text()
SKIPPED = {".git", ".venv", ".venv-sam", ".aws-sam", "node_modules"}


def _python_files() -> set[str]:
    """Every .py file of the tree, as a path relative to the repository."""
    found = set()
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if not SKIPPED & set(relative.parts):
            found.add(relative.as_posix())
    return found


def test_every_python_file_it_names_exists():
    """A path as the map writes it (`metrics/pending.py`, `run_ledger.py` beside its
    function's app) is the end of a real path."""
    paths = set(re.findall(r"[\w/]+\.py\b", DOC))
    assert "metrics/container.py" in paths  # the pattern still matches how the map writes them
    files = _python_files()
    missing = sorted(p for p in paths if not any(f == p or f.endswith("/" + p) for f in files))
    assert not missing, f"ARCHITECTURE.md names files that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def test_every_ops_name_it_names_exists():
    names = set(re.findall(r"`(ops(?:\.\w+)+)", DOC))
    assert "ops.concurrency" in names  # the pattern still matches how the map writes them
    missing = sorted(n for n in names if not _resolves(n))
    assert not missing, f"ARCHITECTURE.md names what the layer does not have: {missing}"
