"""The example's data: scikit-learn's 8x8 handwritten digits as `train` and `test` channels.

Each channel is one `digits.npz` with `x` (float32 [N, 64], pixels scaled to [0, 1]) and `y`
(int64 [N]). The split is stratified, and the files are byte-identical for the same seed.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from aiops.errors import UsageError

FILE_NAME = "digits.npz"
CHANNELS = ("train", "test")


def write_channels(out_dir: str | os.PathLike[str], *, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write `out_dir/train/digits.npz` and `out_dir/test/digits.npz`; return samples and path per channel.

    Only those two files are (over)written; anything else in `out_dir` is left alone.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise UsageError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder.", hint="Pass a folder path for the channels.")

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )

    summary = {}
    for name, (xs, ys) in zip(CHANNELS, ((x_train, y_train), (x_test, y_test)), strict=True):
        path = out / name / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_npz(path, x=xs, y=ys)
        summary[name] = {"samples": int(len(ys)), "path": str(path)}
    return summary


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez, but reproducible (np.savez stamps the current time into the zip) and atomic."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy"), buf.getvalue())  # ZipInfo's fixed 1980 timestamp
    os.replace(tmp, path)
