"""Token shards: the on-disk format of the `train/` and `test/` channels, and a lazy reader.

A channel folder holds `index.json` and fixed-size `shard-NNNNN.bin` files of little-endian uint16
tokens (every shard has `shard_tokens` tokens except the last). The reader maps shards with
np.memmap as they are touched, so a dataset larger than RAM trains: only the pages a batch reads
are loaded, and the OS can drop them again.

Numpy only (no aiops import): train.py ships it to the SageMaker container.
"""

from __future__ import annotations

import bisect
import json
import os

import numpy as np

FORMAT = "aiops-lm-tokens/1"
INDEX_FILE = "index.json"
DTYPE = "<u2"
# the vocabulary (as lm_model's): bytes 0..255, then END_OF_TEXT between documents
END_OF_TEXT = 256
VOCAB_SIZE = 257


class ChannelError(ValueError):
    """A channel folder that is not a token-shard channel (missing, torn or of another format)."""


class TokenShards:
    def __init__(self, folder: str) -> None:
        path = os.path.join(folder, INDEX_FILE)
        try:
            with open(path) as f:
                index = json.load(f)
        except FileNotFoundError:
            index = self._index_from_shards(folder)
        except (OSError, ValueError) as err:
            raise ChannelError(f"{path} is not readable JSON ({err})") from None
        if index.get("format") != FORMAT:
            raise ChannelError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
        self.folder = folder
        self.vocab_size = int(index["vocab_size"])
        self._files, self._starts = [], []
        total = 0
        for shard in index["shards"]:
            file = os.path.join(folder, shard["file"])
            size = os.path.getsize(file) if os.path.exists(file) else -1
            if size != 2 * shard["tokens"]:
                raise ChannelError(
                    f"{file}: expected {2 * shard['tokens']} bytes, found "
                    f"{'no file' if size < 0 else size}; write the channel again"
                )
            self._files.append(file)
            self._starts.append(total)
            total += shard["tokens"]
        self.total = total
        self._maps: dict[int, np.memmap] = {}

    @staticmethod
    def _index_from_shards(folder: str) -> dict:
        """With ShardedByS3Key each host gets some of the channel's objects, and index.json goes to
        one host only: the others read the shards they got (their sizes give the token counts)."""
        names = (
            sorted(n for n in os.listdir(folder) if n.startswith("shard-") and n.endswith(".bin"))
            if os.path.isdir(folder)
            else []
        )
        if not names:
            raise ChannelError(
                f"{folder} has no {INDEX_FILE} and no shard-*.bin; write the channels with "
                "`aiops example lm-data OUT`"
            )
        shards = []
        for name in names:
            size = os.path.getsize(os.path.join(folder, name))
            if size % 2:
                raise ChannelError(f"{os.path.join(folder, name)}: {size} bytes is not whole uint16 tokens")
            shards.append({"file": name, "tokens": size // 2})
        return {"format": FORMAT, "vocab_size": VOCAB_SIZE, "shards": shards}

    def __len__(self) -> int:
        return self.total

    def _shard(self, i: int) -> np.memmap:
        if i not in self._maps:
            self._maps[i] = np.memmap(self._files[i], dtype=DTYPE, mode="r")
        return self._maps[i]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, crossing shard boundaries as needed."""
        if start < 0 or start + length > self.total:
            raise IndexError(f"tokens {start}..{start + length} outside 0..{self.total}")
        out: np.ndarray = np.empty(length, dtype=np.int64)
        done = 0
        i = bisect.bisect_right(self._starts, start) - 1
        while done < length:
            local = start + done - self._starts[i]
            piece = self._shard(i)[local : local + length - done]
            out[done : done + len(piece)] = piece
            done += len(piece)
            i += 1
        return out
