"""The README says what `make demo` runs: the same commands as the Makefile's demo target."""

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
