"""Which installed distributions differ from the lock: run by `make test-latest` in its fresh venv.

Prints one line per difference (`name  locked -> installed`), or that the environment matches the
lock. It only reports: a difference is what a failing `make test-latest` should be read against.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked(path: Path) -> dict[str, str]:
    pins = (PIN.match(line) for line in path.read_text().splitlines())
    return {canonicalize_name(m[1]): m[2] for m in pins if m}


def installed() -> dict[str, str]:
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if d.metadata["Name"] and canonicalize_name(d.metadata["Name"]) != "aiops"
    }


def drift(lock: dict[str, str], now: dict[str, str]) -> list[str]:
    names = sorted(set(lock) | set(now))
    return [
        f"{name:32} {lock.get(name, '-'):>14} -> {now.get(name, '-')}"
        for name in names
        if lock.get(name) != now.get(name)
    ]


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: lock_drift.py LOCKFILE", file=sys.stderr)
        return 2
    lines = drift(locked(Path(sys.argv[1])), installed())
    print(
        f"{len(lines)} distribution(s) differ from {sys.argv[1]}" if lines else f"as locked in {sys.argv[1]}"
    )
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
