"""Type-check the product packages under their import names: `python scripts/typecheck.py [mypy args]`.

The repository keeps one folder per room (`cli/`, `training/`, ...) that installs as `aiops.cli`,
`aiops.training`, ... (`[tool.setuptools] package-dir`). mypy resolves modules by folder, so it is run on
a tree of links laid out as the installed package: the `aiops/` core's files plus one link per room,
taken from pyproject.toml's mapping. Its settings are `[tool.mypy]` in pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def link_tree(root: Path) -> Path:
    """`root/aiops` as installed: the core's entries linked one by one, each room linked whole."""
    package_dir: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = root / "aiops"
    top.mkdir()
    for entry in (REPO / package_dir["aiops"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        if name != "aiops":
            (top / name.removeprefix("aiops.")).symlink_to(REPO / folder)
    return top


def main(argv: list[str]) -> int:
    cache = REPO / ".mypy_cache"
    with tempfile.TemporaryDirectory(prefix="aiops-typecheck-") as tmp:
        link_tree(Path(tmp))
        command = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(cache),
            "-p",
            "aiops",
            *argv,
        ]
        return subprocess.run(command, cwd=tmp, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
