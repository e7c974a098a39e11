"""Shared inputs for the kernel tests: a varlen batch whose K/V live in a randomly paged cache.

`make_paged_batch` (exposed as the fixture of that name) scatters each sequence's tokens over
shuffled, non-contiguous block ids, fills every slot no sequence owns with NaN (so a kernel that
reads past a sequence shows up), pads block tables with an out-of-range id, and also returns each
sequence's K/V as plain contiguous tensors for straightforward reference formulations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch

PAD_BLOCK_ID = 1 << 30  # never a real block: reading through it would fault or raise


@dataclass(frozen=True)
class PagedBatch:
    query: torch.Tensor  # [T, Hq, D], the last q_len tokens of each sequence
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    keys: list[torch.Tensor]  # per sequence, [seq_len, Hkv, D]
    values: list[torch.Tensor]
    max_query_len: int
    max_seq_len: int
    scale: float


def make_paged_batch(
    q_lens: Sequence[int],
    seq_lens: Sequence[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> PagedBatch:
    """A batch of len(seq_lens) sequences; sequence i's queries are its last q_lens[i] tokens."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few spare blocks nobody owns
    block_ids = torch.randperm(num_blocks, generator=gen).tolist()
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_tables = torch.full((len(seq_lens), max(max(blocks_per_seq), 1)), PAD_BLOCK_ID, dtype=torch.int32)
    keys, values = [], []
    for i, (seq_len, num_seq_blocks) in enumerate(zip(seq_lens, blocks_per_seq)):
        owned = [block_ids.pop() for _ in range(num_seq_blocks)]
        block_tables[i, :num_seq_blocks] = torch.tensor(owned, dtype=torch.int32)
        k = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen).to(dtype)
        pos = torch.arange(seq_len)
        slots = torch.tensor(owned, dtype=torch.long)[pos // block_size] * block_size + pos % block_size
        k_cache.view(-1, num_kv_heads, head_dim)[slots] = k
        v_cache.view(-1, num_kv_heads, head_dim)[slots] = v
        keys.append(k.to(device))
        values.append(v.to(device))
    query = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=gen).to(dtype)
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)
    return PagedBatch(
        query=query.to(device),
        k_cache=k_cache.to(device),
        v_cache=v_cache.to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        keys=keys,
        values=values,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        scale=head_dim**-0.5,
    )


@pytest.fixture(name="make_paged_batch")
def make_paged_batch_fixture() -> Callable[..., PagedBatch]:
    return make_paged_batch
