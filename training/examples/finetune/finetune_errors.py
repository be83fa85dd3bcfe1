"""How the fine-tuning script fails: UsageProblem (bad input: one `error:` line, exit 2) and the
failure reason SageMaker shows for the job.

Standard library only (no aiops import): train.py ships it to the SageMaker container.
"""

from __future__ import annotations

import os

USAGE_EXIT_CODE = 2


class UsageProblem(Exception):
    """Bad input found before training: one line, exit 2."""


def write_failure(text: str) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason (1024 characters at most).
    The first rank to fail writes it: the root cause, not a peer's later "connection closed"."""
    path = os.path.join(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"), "failure")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x") as f:
            f.write(text[:1024])
    except OSError:
        pass
