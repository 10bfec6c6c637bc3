"""The shape of the code base: no import cycle among the repository's own modules, and
every module ARCHITECTURE.md names exists."""

from __future__ import annotations

import ast
import re
from functools import cache

from tests.support.import_graph import cycles, graph, modules, tracked_python_files
from tools import FUNCTIONS_DIR, LAYER_DIR, ROOT

# None left: the package loads the catalogue before any family of a team's (its names are
# reserved then), and the families record into ops.metrics.pending's active container.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycle() -> None:
    """Every first-party module (layer, functions, tools, tests, benchmarks, infra), with
    deferred imports counted: a cycle hidden inside a function is still a cycle."""
    assert cycles(graph()) == KNOWN_CYCLES


def test_a_cycle_is_found() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_every_kind_of_import() -> None:
    edges = graph()
    assert "tools.localdb.pgcluster" in edges["tools.localdb.pgbouncer"]  # from x import y
    assert "metrics.live_gauges" in edges["metrics.app"]  # a function's own module
    assert "tools.local_data" in edges["tools.cli"]  # deferred, inside a function
    assert "ops" in modules() and "retention.app" in modules()


@cache
def _top_level_names(module: str) -> frozenset[str]:
    tree = ast.parse(modules()[module].read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def _resolves(dotted: str) -> bool:
    """A module, or a name defined at the top of one (`ops.db.store_db`)."""
    known = modules()
    if dotted in known:
        return True
    module, _, attr = dotted.rpartition(".")
    return module in known and attr in _top_level_names(module)


def test_architecture_names_only_modules_that_exist() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    code = re.findall(r"`([^`\s]+)`", text)
    # Dotted names of the layer and the tools: a module or a module's top-level name.
    dotted = {c for c in code if re.fullmatch(r"(ops|tools)(\.\w+)+", c)}
    assert dotted and not {d for d in dotted if not _resolves(d)}
    # Files, from the root, the layer's package, a function's package or the operator kit.
    functions = [p for p in FUNCTIONS_DIR.iterdir() if p.is_dir()]
    bases = [ROOT, LAYER_DIR / "ops", *functions, ROOT / "infra" / "monitoring"]
    block = re.search(r"```\n(.*?)```", text, re.S)
    assert block
    listed = re.findall(r"^\s*([\w/.-]+\.py)\b", block[1], re.M)
    paths = {c for c in code if re.fullmatch(r"[\w/.-]+\.py", c)} | set(listed)
    missing = {p for p in paths if not any((b / p).is_file() for b in bases)}
    assert paths and not missing, missing


def test_every_runner_has_the_same_paths() -> None:
    """make's PYTHONPATH, pytest's `pythonpath`, mypy's and tools.PYTHONPATH (child
    processes) all name the tools' root, the layer and the functions."""
    import tomllib

    import tools

    expected = {ROOT, LAYER_DIR, FUNCTIONS_DIR}
    makefile = (ROOT / "Makefile").read_text()
    line = re.search(r"^export PYTHONPATH := (.*)$", makefile, re.M)
    assert line
    made = {ROOT / p.replace("$(CURDIR)", ".") for p in line[1].split(":")}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    pytest_paths = {ROOT / p for p in config["pytest"]["ini_options"]["pythonpath"]}
    mypy_paths = {ROOT / p for p in config["mypy"]["mypy_path"].split(":")} | {ROOT}
    child = {ROOT / p for p in tools.PYTHONPATH.split(":")}
    for paths in (made, pytest_paths, mypy_paths, child):
        assert {p.resolve() for p in paths} == expected


def test_one_mypy_run_covers_every_python_file() -> None:
    """`mypy` with no arguments (as `make lint` runs it) reaches every tracked Python file
    but the FastAPI peer, which runs in its own venv (issue 24 item 1)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    tracked = tracked_python_files()
    assert "tests/conftest.py" in tracked  # the listing found the files
    excluded = [re.compile(p) for p in config["exclude"]]
    left_out = [
        p
        for p in tracked
        if not any(p == f or p.startswith(f + "/") for f in config["files"])
        and not any(e.search(p) for e in excluded)
    ]
    assert not left_out, f"not checked by `mypy`: {left_out}"
    assert "ignore_errors" not in str(config.get("overrides", []))
