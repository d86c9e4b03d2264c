"""Every relative link in README.md and docs/ points at a file that is in the repository: the published
tables, figures and captions are reached through these links, and a moved or removed results folder
(docs/mini_fair/..., docs/mini/...) must not leave them dangling."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

# [text](target) with a target that is neither a URL (scheme:) nor an anchor in the same page
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    targets = (m.group(1) for m in _LINK.finditer(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_relative_links_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    checked, broken = 0, []
    for page in pages:
        for target in _relative_links(page):
            checked += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    assert checked >= 20  # the published results are linked from docs/fair-protocol.md and docs/mini-reproduction.md


def test_link_pattern_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](missing.md) [b](https://example.org/x) [c](#anchor) [d](page.md#top)\n", encoding="utf-8")
    assert _relative_links(page) == ["missing.md", "page.md#top"]
