"""The sample batch ``aiops export`` verifies an export with: read from a file or a run's test channel.

numpy (and orjson for JSON) are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiops.errors import UsageError
from aiops.run_folder import RunFolder

SAMPLE_SUFFIXES = (".npy", ".npz", ".json", ".csv")


def check_sample_path(path: Path) -> None:
    """Everything checkable about ``--sample`` before loading numpy."""
    if not path.is_file():
        raise UsageError(f"--sample {path}: no such file")
    if path.suffix.lower() not in SAMPLE_SUFFIXES:
        raise UsageError(f"--sample {path}: use a {', '.join(SAMPLE_SUFFIXES)} file")


def load_sample(path: Path) -> tuple[Any, Any]:
    """``(x, labels or None)`` from a .npy/.npz/.json/.csv file; JSON/CSV and float64 become float32."""
    import numpy as np

    suffix = path.suffix.lower()
    labels = None
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "x" in keys:
                    x = z["x"]
                    labels = z["y"] if "y" in keys else None
                elif len(keys) == 1:
                    x = z[keys[0]]
                else:
                    raise UsageError(f"--sample {path}: holds {keys}; name the inputs 'x' (and labels 'y')")
        elif suffix == ".json":
            import orjson

            data = orjson.loads(path.read_bytes())
            if isinstance(data, dict):
                if "instances" in data:
                    data = data["instances"]
                elif "x" in data:
                    labels = np.asarray(data["y"]) if "y" in data else None
                    data = data["x"]
                else:
                    raise UsageError(f"--sample {path}: a JSON object needs 'instances' or 'x'")
            x = np.asarray(data, dtype=np.float32)
        elif suffix == ".csv":
            x = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        else:
            raise UsageError(f"--sample {path}: use a {', '.join(SAMPLE_SUFFIXES)} file")
    except UsageError:
        raise
    except Exception as err:  # any parser failure: the file is not what its suffix says
        raise UsageError(f"--sample {path}: cannot read it ({' '.join(str(err).split())[:160]})") from None
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise UsageError(f"--sample {path}: needs numbers, got {x.dtype}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    if x.ndim == 0 or x.shape[0] == 0:
        raise UsageError(
            f"--sample {path}: needs a batch (at least one row along the first axis), got shape "
            f"{list(x.shape)}"
        )
    if labels is not None and (labels.ndim != 1 or len(labels) != len(x)):
        labels = None
    return x, labels


def find_run_sample(run_dir: Path) -> Path | None:
    """The first sample file in a local run's test channel (opt/ml/input/data/test)."""
    folder = RunFolder(run_dir).channel("test")
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)
    return files[0] if files else None


def resolve_sample(sample: Path | None, model: str, run_dir: Path | None) -> Path:
    """``--sample``, else the first sample in the run's test channel; a usage error when there is none."""
    if sample is not None:
        return sample
    found = find_run_sample(run_dir) if run_dir is not None else None
    if found is None:
        where = (
            f"run {model} has no .npy/.npz/.json/.csv file in its test channel"
            if run_dir is not None
            else f"{model} is not a local run with a test channel"
        )
        raise UsageError(f"no sample to verify the export with: {where}; give --sample FILE")
    return found
