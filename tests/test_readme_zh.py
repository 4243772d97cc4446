"""README.zh-CN.md is kept in step with README.md: both show the same `convzoo` commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def commands(markdown: str) -> set[str]:
    """The `convzoo ...` command lines of the fenced code blocks (a leading `$ ` and a
    trailing `# comment` dropped, spaces collapsed)."""
    found = set()
    for block in FENCE.findall(markdown):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if not line.startswith("convzoo "):
                continue
            line = re.split(r"\s+#\s", line, maxsplit=1)[0]
            found.add(" ".join(line.split()))
    return found


def test_the_extraction_reads_code_blocks_only():
    text = (
        "Run `convzoo list` inline.\n\n```\nconvzoo list   # all of them\n"
        "$ convzoo train  nin --epochs 1\nmake test\n```\n"
    )
    assert commands(text) == {"convzoo list", "convzoo train nin --epochs 1"}


def test_both_readmes_show_the_same_commands():
    english = commands((ROOT / "README.md").read_text(encoding="utf-8"))
    chinese = commands((ROOT / "README.zh-CN.md").read_text(encoding="utf-8"))
    assert len(english) >= 10
    assert english - chinese == set(), "in README.md only"
    assert chinese - english == set(), "in README.zh-CN.md only"


def test_each_links_to_the_other():
    assert "README.zh-CN.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "README.md" in (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")
