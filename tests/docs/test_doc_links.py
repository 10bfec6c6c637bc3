"""README.md stays the user's short path, and every relative link of it and of docs/*.md
leads somewhere: to a file of the repository and, for a Markdown page, to one of its headings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.doc_commands import heading_anchors, relative_links, user_docs
from tools import ROOT

README_MAX_LINES = 350  # issue 22: the path, not the archive; the rest lives in docs/


def test_the_readme_is_under_its_line_budget() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/*.md"


# The pages the README links that link back into it and docs/ (ARCHITECTURE.md has no links).
LINKED = [ROOT / "events" / "README.md", ROOT / "infra" / "monitoring" / "README.md"]


@pytest.mark.parametrize("doc", [*user_docs(), *LINKED], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(doc: Path) -> None:
    links = relative_links(doc)
    assert links, f"{doc.name}: no links found (the pattern no longer matches?)"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        shown = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.is_relative_to(ROOT):
            broken.append(f"{link}: outside the repository")
        elif not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(f"{link}: no such heading in {shown}")
    assert broken == [], f"{doc.relative_to(ROOT)}: {broken}"


def test_the_link_checks_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A `sam local`, where: it runs\n\n## Logs\n\n## Logs\n\n"
        "[a](x.md) [b](#logs-1) [c](https://example.com/y) `[d](z.md)`\n\n"
        "```sh\n[e](w.md)\n```\n"
    )
    assert relative_links(page) == ["x.md", "#logs-1"]
    assert heading_anchors(page) == {"a-sam-local-where-it-runs", "logs", "logs-1"}
