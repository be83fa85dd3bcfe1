"""The README says what `make demo` runs, and the pages' links resolve."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    return [
        " ".join(line.split("#", 1)[0].split())
        for line in joined.splitlines()
        if line.split("#", 1)[0].strip()
    ]


def test_readme_demo_block_matches_the_makefile() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## What `make demo` runs", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    makefile = (REPO / "Makefile").read_text()
    data = re.search(r"^DATA := (.+)$", makefile, re.M).group(1).strip()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n?)+)", makefile, re.M).group(1)
    make_cmds = [c.replace("$(BIN)/", "").replace("$(DATA)", data) for c in _commands(recipe)]
    assert _commands(block) == make_cmds


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_of_the_pages_resolves() -> None:
    """README.md, bench/README.md and docs/*.md: each relative link names a file that exists (a
    deleted result table or a renamed page shows here), and an anchor a heading of that page."""
    pages = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert len(pages) > 10 and not broken, broken
