"""`aiops example lm-data`: reproducible token shards, and the lazy (memory-mapped) reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from aiops.training.examples.lm.lm_data import END_OF_TEXT, VOCAB_SIZE, ChannelError, TokenShards
from aiops.training.examples.lm.prepare import corpus_files, write_channels

from aiops.errors import UsageError


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_files(tmp_path: Path) -> None:
    kw = dict(train_bytes=120_000, test_bytes=20_000, shard_tokens=50_000)
    write_channels(tmp_path / "a", seed=3, **kw)
    write_channels(tmp_path / "b", seed=3, **kw)
    write_channels(tmp_path / "c", seed=4, **kw)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    index_a = json.loads((tmp_path / "a" / "train" / "index.json").read_text())
    index_c = json.loads((tmp_path / "c" / "train" / "index.json").read_text())
    assert index_a["source"]["files"] != index_c["source"]["files"]
    test_files = json.loads((tmp_path / "a" / "test" / "index.json").read_text())["source"]["files"]
    assert not set(test_files) & set(index_a["source"]["files"])  # test and train are disjoint files


def test_shards_are_fixed_size_and_hold_the_files_bytes(tmp_path: Path) -> None:
    summary = write_channels(tmp_path, train_bytes=120_000, test_bytes=20_000, shard_tokens=50_000, seed=0)
    index = json.loads((tmp_path / "train" / "index.json").read_text())
    sizes = [s["tokens"] for s in index["shards"]]
    assert summary["train"]["shards"] == len(sizes) >= 2
    assert all(n == 50_000 for n in sizes[:-1]) and 0 < sizes[-1] <= 50_000
    assert sum(sizes) == index["total_tokens"] == summary["train"]["tokens"]
    data = TokenShards(str(tmp_path / "train"))
    tokens = data.read(0, len(data))
    # the stream is the files' bytes, each followed by END_OF_TEXT, in the index's order
    base = corpus_files()[0]
    root = next(p for p in base.parents if (p / index["source"]["files"][0]).is_file())
    expected = b"".join((root / name).read_bytes() + b"\x00" for name in index["source"]["files"])
    ends = tokens == END_OF_TEXT
    assert ends.sum() == index["documents"]
    assert bytes(np.where(ends, 0, tokens).astype(np.uint8)) == expected


def test_reads_cross_shards_lazily(tmp_path: Path) -> None:
    write_channels(tmp_path, train_bytes=120_000, test_bytes=20_000, shard_tokens=50_000, seed=0)
    data = TokenShards(str(tmp_path / "train"))
    assert data._maps == {}  # nothing is mapped before a read
    whole = np.concatenate([np.fromfile(p, dtype="<u2") for p in sorted((tmp_path / "train").glob("*.bin"))])
    window = data.read(49_990, 30)  # spans shards 0 and 1
    assert window.tolist() == whole[49_990:50_020].tolist()
    assert set(data._maps) == {0, 1} and all(isinstance(m, np.memmap) for m in data._maps.values())
    with pytest.raises(IndexError):
        data.read(len(data) - 5, 10)


def test_a_host_with_some_shards_and_no_index_reads_them(tmp_path: Path) -> None:
    """ShardedByS3Key: index.json went to another host."""
    write_channels(tmp_path, train_bytes=120_000, test_bytes=20_000, shard_tokens=50_000, seed=0)
    whole = TokenShards(str(tmp_path / "train"))
    (tmp_path / "train" / "index.json").unlink()
    (tmp_path / "train" / "shard-00000.bin").unlink()
    part = TokenShards(str(tmp_path / "train"))
    assert len(part) == len(whole) - 50_000
    assert part.read(0, 100).tolist() == whole.read(50_000, 100).tolist()


def test_torn_or_missing_channels_are_named(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="no index.json and no shard-.*aiops example lm-data"):
        TokenShards(str(tmp_path))
    write_channels(tmp_path, train_bytes=60_000, test_bytes=20_000, shard_tokens=50_000, seed=0)
    shard = tmp_path / "train" / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ChannelError, match="shard-00001.bin: expected .* bytes, found 100"):
        TokenShards(str(tmp_path / "train"))


def test_cli_writes_channels_and_refuses_a_file(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "lm"
    result = run_cli("example", "lm-data", str(out), "--train-bytes", "60000", "--test-bytes", "20000")
    assert result.returncode == 0, result.output
    assert "train:" in result.stdout and (out / "train" / "index.json").is_file()
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    bad = run_cli("example", "lm-data", str(a_file))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.output
    assert a_file.read_text() == "mine"


def test_the_data_and_the_model_agree_on_the_vocabulary() -> None:
    from aiops.training.examples.lm import lm_model

    assert (lm_model.END_OF_TEXT, lm_model.VOCAB_SIZE) == (END_OF_TEXT, VOCAB_SIZE)


def test_refuses_a_test_set_larger_than_the_corpus(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="too small"):
        write_channels(tmp_path, test_bytes=10**12)
