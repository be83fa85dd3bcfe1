"""The wheel installs everything under the single `aiops` import name (no bare `cli`, `inference`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_namespaces_every_folder(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # setuptools says nothing is deprecated: the SPDX license string, aiops.data listed as a package
    log = built.stdout + built.stderr
    assert "SetuptoolsDeprecationWarning" not in log and "is deprecated" not in log, log[-3000:]
    assert "absent from the `packages` configuration" not in log, log[-3000:]
    (wheel,) = tmp_path.glob("aiops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"aiops", "aiops-0.1.0.dist-info"}
    for module in (
        "aiops/cli/app.py",
        "aiops/training/local.py",
        "aiops/training/contract.py",
        "aiops/settings.py",
        "aiops/inference/__init__.py",
        "aiops/infra/__init__.py",
        "aiops/training/examples/digits/train.py",
        "aiops/data/prices.json",
        "aiops/inference/serving/http/routes.py",
        "aiops/inference/serving/Dockerfile",
        "aiops/inference/client/invoke.py",
        "aiops/inference/export/pipeline.py",
    ):
        assert module in names, module
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "aiops = aiops.cli.app:main" in entry_points
