"""The shell commands that README.md, docs/*.md and the runbook show, as a reader would copy
them, and the relative links of those pages."""

from __future__ import annotations

import re
from pathlib import Path

from tools import ROOT

_BLOCK = re.compile(r"^[ \t]*```(?:sh|bash)\n(.*?)^[ \t]*```", re.S | re.M)
_INLINE = re.compile(r"`((?:aws|make|curl|promtool|git|\.venv-sam/bin/sam) [^`]+)`")


def block_commands(path: Path) -> list[str]:
    """Each command of the ```sh / ```bash blocks: continuation lines joined, the
    trailing `# comment` and blank lines dropped, indentation removed."""
    commands: list[str] = []
    for block in _BLOCK.findall(path.read_text()):
        pending = ""
        for raw in block.splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            line = re.sub(r"\s+#\s.*$", "", pending + line).strip()
            pending = ""
            if line:
                commands.append(line)
    return commands


def user_docs() -> list[Path]:
    """The user's path (README.md) and the pages it links for the rest (docs/*.md)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def user_doc_commands(root: Path = ROOT) -> list[str]:
    """Every block command of README.md and docs/*.md (of the checkout at `root`), in order."""
    return [c for doc in user_docs() for c in block_commands(root / doc.relative_to(ROOT))]


def inline_commands(path: Path, program: str) -> list[str]:
    """Commands quoted inline (`aws cloudformation …`) that start with `program`."""
    return [c for c in _INLINE.findall(path.read_text()) if c.split()[0] == program]


def code_block(path: Path, lang: str, containing: str) -> str:
    """The one ```lang block of `path` that contains `containing`, as written."""
    pattern = re.compile(rf"^```{re.escape(lang)}\n(.*?)^```", re.S | re.M)
    found: list[str] = [b for b in pattern.findall(path.read_text()) if containing in b]
    assert len(found) == 1, f"{path.name}: {len(found)} ```{lang} blocks contain {containing!r}"
    return found[0]


# [text](target) outside code: an inline link; `![alt](src)` images count too.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links of `path` that are not URLs (no scheme, no mail)."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text()))
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of `path`: lower case, punctuation but `-` and
    `_` dropped, spaces as `-`, a repeated one suffixed -1, -2, …"""
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    text = _FENCE.sub("", path.read_text())
    for title in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors
