"""README.md and docs/: every relative link points to a file that exists and, with a #fragment, to a heading
of that file (GitHub's anchors); every docs/*.md page is reachable by links from README.md. Links are read
with markdown-it-py, so a link-like text in a code span or code block is not one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
MD = MarkdownIt("commonmark").enable("table")


def _inline_text(token: Token) -> str:
    return "".join(c.content for c in token.children or () if c.type in ("text", "code_inline"))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to -, and
    -1, -2, ... after the first of equal ones."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    tokens = MD.parse(page.read_text(encoding="utf-8"))
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open":
            continue
        slug = re.sub(r"[^\w\- ]", "", _inline_text(tokens[i + 1]).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> Iterator[str]:
    for tok in MD.parse(page.read_text(encoding="utf-8")):
        for child in tok.children or ():
            if child.type == "link_open":
                yield str(child.attrs["href"])
            elif child.type == "image":
                yield str(child.attrs["src"])


def relative_targets(page: Path) -> Iterator[tuple[str, Path, str]]:
    """(link, target file, fragment) of each link that is not an absolute URL or mail address."""
    for href in links(page):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        yield href, target, unquote(parts.fragment)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for href, target, fragment in relative_targets(page):
        if not target.exists():
            broken.append(f"{href}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{href}: no heading #{fragment} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_doc_reachable_from_readme() -> None:
    reached: set[Path] = set()
    todo = [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for _, target, _ in relative_targets(page):
            if target.suffix == ".md" and target.is_file():
                todo.append(target)
    unreached = [str(p.relative_to(ROOT)) for p in PAGES if p not in reached]
    assert not unreached, f"not linked from README.md or a page it links to: {unreached}"


def test_anchor_rules() -> None:
    """The slug rules on headings as GitHub renders them (a heading in backticks, punctuation, a repeat)."""
    page = ROOT / "docs" / "operations.md"
    got = anchors(page)
    assert "server-connections-health-and-lifecycle" in got
    assert "the-pool-coordinator-max_db_connections" in got
    assert "1-generate-a-config-from-a-running-postgresql" in got
