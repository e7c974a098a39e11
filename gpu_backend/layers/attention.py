"""Paged attention: rotate q/k, store this step's keys and values in the KV cache, then attend over the cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..kernels import Kernels
from .rotary import RotaryEmbedding


@dataclass
class AttentionMetadata:
    """Where a batch's tokens sit in the paged cache; built once per step by the model runner.

    Sequence i contributes ``query_start_loc[i+1] - query_start_loc[i]`` new tokens, the last ones
    of its ``seq_lens[i]`` tokens. ``slot_mapping`` has one cache slot per new token (-1: padding).
    The first ``num_decodes`` sequences have exactly one new token each.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    is_decode_only: bool  # every sequence has exactly one new token: the decode kernel serves it
    num_decodes: int = 0


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, ops: Kernels,
                 rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.ops = ops
        self.rotary = rotary
        self.k_cache = torch.empty(0)  # views into the engine's KV cache, set by the model runner
        self.v_cache = torch.empty(0)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """query [T, Hq, D], key/value [T, Hkv, D] (not yet rotated) -> [T, Hq, D]."""
        if self.rotary is not None:  # one launch rotates q and k and writes k and v to the cache
            query = self.ops.rotary_store_kv(query, key, value, positions, self.rotary.cos_sin_cache,
                                             self.k_cache, self.v_cache, meta.slot_mapping)
        else:
            self.ops.store_kv_cache(key, value, self.k_cache, self.v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            return self.ops.decode_attention(query, self.k_cache, self.v_cache, meta.seq_lens, meta.block_tables,
                                             self.scale)
        return self.ops.paged_attention(query, self.k_cache, self.v_cache, meta.query_start_loc, meta.seq_lens,
                                        meta.block_tables, meta.max_query_len, meta.max_seq_len, self.scale,
                                        meta.num_decodes)
