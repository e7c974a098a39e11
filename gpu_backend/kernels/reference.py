"""Plain-torch twins of the engine's kernels: the CPU path, and the reference the Triton kernels
are tested against.

Same signatures and semantics as the Triton versions (see docs/engine.md, "Kernels").
Clarity over speed: attention loops over sequences on the host, which is fine for the small
models the CPU path runs and for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpu_backend.weights.packed import CompressedWeight, Weight


def store_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each token's K/V at its slot (block_id * block_size + offset); slots < 0 are padding."""
    is_real = slot_mapping >= 0
    slots = slot_mapping[is_real]
    # .view (not .flatten) so a cache that is not one dense block fails loudly instead of copying.
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[is_real].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[is_real].to(v_cache.dtype)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    num_decodes: int = 0,
) -> torch.Tensor:
    """Varlen causal attention over the paged cache: each sequence's queries are its last q_len tokens.

    `num_decodes` says the first sequences have one query each (the Triton backend serves them
    with its decode kernel); the result is the same either way."""
    del max_query_len, max_seq_len, num_decodes  # launch hints for the Triton kernels
    out = torch.zeros_like(query)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[i], starts[i + 1]
        if end == start:
            continue
        keys, values = _gather_kv(k_cache, v_cache, block_tables[i], seq_len)
        out[start:end] = _causal_attention(query[start:end], keys, values, seq_len - (end - start), scale)
    return out


def decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per sequence (its last token); rows with seq_len 0 come back as zeros.

    Writes into `out` (a [num_seqs, Hq, D] tensor or view) when given."""
    num_seqs = query.shape[0]
    query_start_loc = torch.arange(num_seqs + 1, dtype=torch.int32, device=query.device)
    block_size = k_cache.shape[1]
    max_seq_len = block_tables.shape[1] * block_size
    result = paged_attention(
        query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, 1, max_seq_len, scale
    )
    if out is None:
        return result
    out.copy_(result)
    return out


def _gather_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first seq_len tokens of one sequence as contiguous [seq_len, Hkv, D] K and V."""
    block_size = k_cache.shape[1]
    block_ids = block_table[: -(-seq_len // block_size)].long()
    keys = k_cache[block_ids].flatten(0, 1)[:seq_len]
    values = v_cache[block_ids].flatten(0, 1)[:seq_len]
    return keys, values


def _causal_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_context_tokens: int, scale: float
) -> torch.Tensor:
    """Attention of q_len queries at positions num_context_tokens.. over keys 0..; fp32 softmax, GQA."""
    q_len, num_q_heads, head_dim = query.shape
    num_kv_heads = keys.shape[1]
    group = num_q_heads // num_kv_heads
    q = query.float().view(q_len, num_kv_heads, group, head_dim)
    scores = torch.einsum("qhgd,khd->hgqk", q, keys.float()) * scale
    query_pos = torch.arange(q_len, device=query.device) + num_context_tokens
    key_pos = torch.arange(keys.shape[0], device=query.device)
    visible = key_pos[None, :] <= query_pos[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    # A query that sees no key (padding at position -1) gets zeros, not NaN.
    probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    out = torch.einsum("hgqk,khd->qhgd", probs, values.float())
    return out.reshape(q_len, num_q_heads, head_dim).to(query.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim in transformers' order: normalise in fp32, cast, then scale."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm block's add and norm in one pass."""
    new_residual = x + residual
    return rms_norm(new_residual, weight, eps), new_residual


def apply_rotary(
    query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half (GPT-NeoX) rotary embedding; cache row p is cat(cos(p*inv_freq), sin(p*inv_freq))."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    cos = torch.cat([cos, cos], dim=-1).to(query.dtype).unsqueeze(1)
    sin = torch.cat([sin, sin], dim=-1).to(query.dtype).unsqueeze(1)
    return query * cos + _rotate_half(query) * sin, key * cos + _rotate_half(key) * sin


def rotary_store_kv(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """Rotate q and k, store the rotated k and v at their slots; returns the rotated query."""
    query, key = apply_rotary(query, key, positions, cos_sin_cache)
    store_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    return query


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gate: silu(x[:, :I]) * x[:, I:] for x = [gate | up]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b``; the Triton backend has a GEMV for single rows. A compressed (ECF) weight is
    decoded first, by the twin of the Triton decode (CompressedWeight.decode)."""
    if isinstance(weight, CompressedWeight):
        weight = weight.decode()
    return F.linear(x, weight, bias)


def rms_norm_linear(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
    weight: Weight, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(x + residual)), x + residual); without a residual, (linear(rms_norm(x)), x)."""
    if residual is None:
        return linear(rms_norm(x, norm_weight, eps), weight, bias), x
    normed, new_residual = fused_add_rms_norm(x, residual, norm_weight, eps)
    return linear(normed, weight, bias), new_residual


def silu_and_mul_linear(gate_up: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(silu(gate) * up) for gate_up = [gate | up]."""
    return linear(silu_and_mul(gate_up), weight, bias)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax(logits.float(), dim=-1) without the copy: widening to float32 is exact and keeps
    the order, so the first largest index (or the first NaN) is the same."""
    return logits.argmax(dim=-1)
