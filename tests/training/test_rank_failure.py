"""A script that fails in one rank under torchrun: the run's failure reason names that rank and shows
its traceback first, not torchrun's own frames (its ChildFailedError and the launcher's stack).

Both ways a script can fail there: under torch's `@record` (torchrun copies the rank's error file
to the TORCHELASTIC_ERROR_FILE aiops gives it), and a plain script (the rank's traceback is found
in the log, the rank in torchrun's root-cause summary)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

PLAIN = textwrap.dedent(
    """
    import os, time

    def load_batch(rank):
        raise ValueError(f"bad batch on rank {rank}")

    rank = int(os.environ["RANK"])
    if rank == 1:
        load_batch(rank)
    time.sleep(5)  # rank 0 is stopped by torchrun when rank 1 fails
    """
)
RECORDED = textwrap.dedent(
    """
    import os, time
    from torch.distributed.elastic.multiprocessing.errors import record

    def load_batch(rank):
        raise ValueError(f"bad batch on rank {rank}")

    @record
    def main():
        rank = int(os.environ["RANK"])
        if rank == 1:
            load_batch(rank)
        time.sleep(5)

    main()
    """
)


@pytest.mark.parametrize("script", [PLAIN, RECORDED], ids=["plain", "record"])
def test_the_failed_ranks_traceback_comes_first(
    run_cli, tmp_path: Path, aiops_home: Path, script: str
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(script)
    result = run_cli("train", "train.py", "--source-dir", str(source), "--nproc", "2", "--json", timeout=120)
    assert result.returncode == 1, result.output
    reason = json.loads(result.stdout)["failure_reason"]
    lines = reason.splitlines()
    assert lines[0] == "AlgorithmError: ExecuteUserScriptError: exit code 1", reason
    assert lines[1] == "rank 1 failed first:" and lines[2] == "Traceback (most recent call last):", reason
    assert 'in load_batch\n    raise ValueError(f"bad batch on rank {rank}")' in reason
    assert lines[-1] == "ValueError: bad batch on rank 1"
    assert "ChildFailedError" not in reason and "torch/distributed" not in reason
    # the summary's log tail stops before torchrun's own traceback: the rank's output is what it shows
    record = json.loads(
        (aiops_home / "runs" / json.loads(result.stdout)["job_name"] / "run.json").read_text()
    )
    tail = "\n".join(record["log_tail"])
    assert "ChildFailedError" not in tail and "torch/distributed/run.py" not in tail, tail
    if script is PLAIN:  # printed by Python in the rank (under @record, the error goes to its error file)
        assert "ValueError: bad batch on rank 1" in tail, tail


def test_the_summary_names_the_rank_and_its_exception(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(PLAIN)
    result = run_cli("train", "train.py", "--source-dir", str(source), "--nproc", "2", timeout=120)
    assert result.returncode == 1, result.output
    failure = [line for line in result.output.splitlines() if line.startswith("failure:")]
    assert failure == [
        "failure: AlgorithmError: ExecuteUserScriptError: exit code 1 rank 1 failed first: ... "
        "ValueError: bad batch on rank 1"
    ], result.output[-3000:]
