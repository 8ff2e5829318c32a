"""The README's Python example runs as written; the README stays a front page; every relative link in the README
and docs/ resolves (file and heading anchor)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: The README is a front page: at most this many bytes (the detail lives in docs/).
MAX_README_BYTES = 16 * 1024

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_a_python_example() -> None:
    assert _python_blocks(), "README.md lost its 'Explain a clip in Python' example"


def test_readme_python_examples_run(capsys) -> None:
    for block in _python_blocks():
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([2, 3, 16, 56, 56])" in printed
    assert "torch.Size([3, 2, 3, 16, 56, 56])" in printed


def test_readme_is_a_front_page() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {MAX_README_BYTES})"
    assert "## What is safe to load" in README.read_text(), "README.md lost its 'What is safe to load' section"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not ``-`` / ``_``), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Heading anchors of a markdown page (repeated headings get ``-1``, ``-2`` … as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if not match:
            continue
        base = slug(match[1])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    """Link and image targets of ``page`` that are not URLs (code blocks and code spans left out)."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", page.read_text()))
    targets = [a or b for a, b in _LINK.findall(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    return broken


def test_slug_follows_github() -> None:
    assert slug("Grad-CAM on any layer (frame alignment)") == "grad-cam-on-any-layer-frame-alignment"
    assert slug("mr-explain: the paper's tables and figure") == "mr-explain-the-papers-tables-and-figure"
    assert slug("Live explanations (`mr-live`)") == "live-explanations-mr-live"


def test_broken_links_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad anchor](#nope) [missing](missing.md) [url](https://x.org/y)\n"
                    "`[in code](nowhere.md)`\n")
    assert broken_links(page) == ["#nope (no heading with anchor #nope)", "missing.md (no such file)"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []
