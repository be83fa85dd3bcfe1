"""The running batch's tensors: left-padded prompts, the KV cache, and how rows join and leave.

Every row of a :class:`Batch` is left-padded to one length: its cache columns and attention mask line up on
the right, so one decode step appends one column for every row. Padding is masked out and position ids
count real tokens only (``generate``'s ``attention_mask.cumsum(-1) - 1``), which gives each row the
computation it would get alone. Rows are re-stacked when sequences join (:func:`merge`) or leave
(:func:`select`); the ``DynamicCache`` the model appends to is rebuilt from ``kv`` after that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

KV = list[
    tuple[torch.Tensor, torch.Tensor]
]  # per layer: (keys, values), each [rows, kv_heads, length, head_dim]


@dataclass
class Batch:
    """Rows of sequences decoded together: row r is ``seqs[r]``; the cache and mask share one length."""

    seqs: list[Any]
    kv: KV
    mask: torch.Tensor  # [rows, length], 0 on padding
    lengths: torch.Tensor  # [rows]: real tokens in the cache, the next position id
    next_input: torch.Tensor  # [rows]: the last chosen token, fed at the next step
    cache: object = None  # the DynamicCache the model appends to, built from ``kv`` when rows change
    padded: bool = False  # some row has padding: the engine then builds the attention mask itself


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts of any lengths as one left-padded batch: (input_ids, attention_mask, position_ids), each
    [rows, longest]. Padding positions take position 1, as ``generate`` gives them (never attended)."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
    return input_ids, mask, positions


def prefill_groups(lengths: Sequence[int], padding: float | None) -> list[list[int]]:
    """The indexes of prompts of these lengths, grouped for joint prefills, shortest first: a group grows
    while its padded size (rows x its longest) stays within ``1 + padding`` times its real tokens. None: one
    group. Padding is computed like any token, so on a CPU, where a forward's cost is its tokens', it is
    bounded; where a forward's cost is its launch (a GPU, small batches) one group is cheapest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if padding is None:
        return [order] if order else []
    groups: list[list[int]] = []
    real = 0
    for i in order:  # ascending: the newcomer is the group's longest
        if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + padding) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A decode step's [rows, 1, 1, length] mask as attention adds it: 0 where attended, the dtype's minimum
    on padding. transformers takes a 4D mask as is; its own builder costs most of a small model's step."""
    return (1 - mask[:, None, None, :]).to(dtype) * torch.finfo(dtype).min


def merge(parts: list[Batch]) -> Batch:
    """Stack batches into one, each left-padded to the longest."""
    length = max(part.mask.shape[1] for part in parts)

    def pad_kv(t: torch.Tensor) -> torch.Tensor:  # [rows, heads, len, dim]: zeros on the left of len
        return F.pad(t, (0, 0, length - t.shape[2], 0))

    kv = [
        (
            torch.cat([pad_kv(part.kv[layer][0]) for part in parts]),
            torch.cat([pad_kv(part.kv[layer][1]) for part in parts]),
        )
        for layer in range(len(parts[0].kv))
    ]
    mask = torch.cat([F.pad(part.mask, (length - part.mask.shape[1], 0)) for part in parts])
    return Batch(
        [seq for part in parts for seq in part.seqs],
        kv,
        mask,
        torch.cat([part.lengths for part in parts]),
        torch.cat([part.next_input for part in parts]),
        padded=any(part.padded or part.mask.shape[1] < length for part in parts),
    )


def select(batch: Batch, rows: list[int]) -> Batch | None:
    """The batch with only ``rows`` (in that order), trimmed of the columns that are padding in all of them;
    None when no row is left. The batch itself when every row stays."""
    if not rows:
        return None
    if rows == list(range(len(batch.seqs))):
        return batch
    index = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int((mask.sum(dim=0) > 0).nonzero()[0])
    mask = mask[:, start:]
    return Batch(
        [batch.seqs[row] for row in rows],
        [
            (keys.index_select(0, index)[:, :, start:], values.index_select(0, index)[:, :, start:])
            for keys, values in batch.kv
        ],
        mask,
        batch.lengths.index_select(0, index),
        batch.next_input.index_select(0, index),
        padded=bool((mask == 0).any()),
    )


def cache_layers(cache) -> KV:
    """A ``DynamicCache``'s tensors, layer by layer."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def build_cache(kv: KV):
    """A ``DynamicCache`` holding ``kv``, for the model to append the next step to."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(kv):
        cache.update(keys, values, layer)
    return cache
