"""The import graph of the repository's own modules, read from the source (ast): every
`import` and `from … import`, at module level or deferred inside a function, since a
deferred import still ties two modules together."""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tools import FUNCTIONS_DIR, LAYER_DIR, ROOT

# Where each of the repository's import roots lives (as PYTHONPATH lays them out).
SOURCE_ROOTS: dict[Path, tuple[str, ...]] = {
    ROOT: ("tools", "tests", "benchmarks", "infra"),
    LAYER_DIR: ("ops",),
    FUNCTIONS_DIR: ("health", "metrics", "retention"),
}
SKIPPED = ("/.work/", "/__pycache__/")


def tracked_python_files() -> list[str]:
    """Every Python file of the project, relative to its root: tracked, or new and not
    ignored by git (so not the virtualenvs, caches or `.aws-sam`)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [p for p in out.splitlines() if (ROOT / p).is_file()]


def modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every first-party module."""
    found: dict[str, Path] = {}
    for base, tops in SOURCE_ROOTS.items():
        for top in tops:
            for path in sorted((base / top).rglob("*.py")):
                if any(s in path.as_posix() for s in SKIPPED):
                    continue
                parts = list(path.relative_to(base).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, tree: ast.AST) -> Iterator[tuple[str, str | None]]:
    """(module, imported name or None) for each import in `tree`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield base, alias.name


def graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports (the deepest module each names)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = edges.setdefault(name, set())
        for module, attr in _imported(name, path, ast.parse(path.read_text(), str(path))):
            if attr is not None and f"{module}.{attr}" in known:
                targets.add(f"{module}.{attr}")
            elif module in known:
                targets.add(module)
        targets.discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)
