"""The shell commands that README.md and the runbook show, as a reader would copy them."""

from __future__ import annotations

import re
from pathlib import Path

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


def inline_commands(path: Path, program: str) -> list[str]:
    """Commands quoted inline (`aws cloudformation …`) that start with `program`."""
    return [c for c in _INLINE.findall(path.read_text()) if c.split()[0] == program]


def code_block(path: Path, lang: str, containing: str) -> str:
    """The one ```lang block of `path` that contains `containing`, as written."""
    pattern = re.compile(rf"^```{re.escape(lang)}\n(.*?)^```", re.S | re.M)
    found = [b for b in pattern.findall(path.read_text()) if containing in b]
    assert len(found) == 1, f"{path.name}: {len(found)} ```{lang} blocks contain {containing!r}"
    return found[0]
