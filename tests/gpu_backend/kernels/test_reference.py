"""The torch twins (gpu_backend/kernels/reference.py) against the most direct formulation of each
kernel, written here independently: attention per sequence and per head with an explicit causal
mask over contiguous K/V in float64, RMS norm and rotary as transformers' Llama code does them."""

from __future__ import annotations

import pytest
import torch

from gpu_backend.kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size)
ATTENTION_CASES = [
    pytest.param([37], [37], 4, 4, 64, 16, id="one-prompt-mha"),
    pytest.param([1, 50, 1, 7], [33, 50, 129, 60], 8, 4, 64, 16, id="mixed-decode-prompt-chunk"),
    pytest.param([5, 1, 20], [100, 1, 45], 16, 2, 128, 8, id="gqa8-prefix-chunks"),
    pytest.param([9, 3], [9, 70], 4, 2, 80, 32, id="head-dim-80"),
    pytest.param([1, 300, 1], [700, 300, 1], 8, 2, 64, 16, id="long-prompt-between-decodes"),
    pytest.param([6, 1, 0], [30, 17, 0], 14, 2, 64, 16, id="group-7-padded-seq"),
]


def naive_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of the last len(query) positions of one sequence, head by head, float64."""
    q_len, num_q_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_q_heads // num_kv_heads
    out = torch.zeros(query.shape, dtype=torch.float64)
    for h in range(num_q_heads):
        q = query[:, h].double()
        k, v = keys[:, h // group].double(), values[:, h // group].double()
        scores = (q @ k.T) * scale
        for j in range(q_len):
            scores[j, seq_len - q_len + j + 1 :] = float("-inf")
        out[:, h] = torch.softmax(scores, dim=-1) @ v
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_lens,seq_lens,num_q_heads,num_kv_heads,head_dim,block_size", ATTENTION_CASES)
def test_paged_attention_matches_naive(
    make_paged_batch, q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype
) -> None:
    b = make_paged_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype)
    out = reference.paged_attention(
        b.query,
        b.k_cache,
        b.v_cache,
        b.query_start_loc,
        b.seq_lens,
        b.block_tables,
        b.max_query_len,
        b.max_seq_len,
        b.scale,
    )
    assert out.shape == b.query.shape and out.dtype == dtype
    starts = b.query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens):
        if q_lens[i] == 0:
            continue
        expected = naive_attention(b.query[starts[i] : starts[i + 1]], b.keys[i], b.values[i], b.scale)
        torch.testing.assert_close(
            out[starts[i] : starts[i + 1]].double(), expected, atol=ATOL[dtype], rtol=0
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_matches_naive_and_zeros_padded_rows(make_paged_batch, dtype) -> None:
    seq_lens = [1, 0, 300, 16, 0, 47]
    b = make_paged_batch([1] * len(seq_lens), seq_lens, 8, 2, 64, 16, dtype, seed=3)
    out = reference.decode_attention(b.query, b.k_cache, b.v_cache, b.seq_lens, b.block_tables, b.scale)
    for i, seq_len in enumerate(seq_lens):
        if seq_len == 0:
            assert torch.equal(out[i], torch.zeros_like(out[i]))  # CUDA-graph padding row
            continue
        expected = naive_attention(b.query[i : i + 1], b.keys[i], b.values[i], b.scale)
        torch.testing.assert_close(out[i : i + 1].double(), expected, atol=ATOL[dtype], rtol=0)


def test_decode_attention_is_paged_attention_with_one_query(make_paged_batch) -> None:
    b = make_paged_batch([1, 1, 1], [5, 64, 33], 4, 1, 64, 16, seed=4)
    decode = reference.decode_attention(b.query, b.k_cache, b.v_cache, b.seq_lens, b.block_tables, b.scale)
    paged = reference.paged_attention(
        b.query, b.k_cache, b.v_cache, b.query_start_loc, b.seq_lens, b.block_tables, 1, 64, b.scale
    )
    torch.testing.assert_close(decode, paged, atol=0, rtol=0)


def test_store_kv_cache_writes_slots_and_skips_padding() -> None:
    gen = torch.Generator().manual_seed(5)
    k_cache = torch.randn(6, 4, 2, 8, generator=gen)
    v_cache = torch.randn(6, 4, 2, 8, generator=gen)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    key, value = torch.randn(5, 2, 8, generator=gen), torch.randn(5, 2, 8, generator=gen)
    slot_mapping = torch.tensor([13, -1, 0, 23, -1])
    reference.store_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            k_before[slot // 4, slot % 4], v_before[slot // 4, slot % 4] = key[t], value[t]
    assert torch.equal(k_cache, k_before) and torch.equal(v_cache, v_before)


def llama_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward, step by step."""
    hidden = x.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 96), (3, 5, 64)])
def test_rms_norm_and_fused_add_match_llama(dtype, shape) -> None:
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    residual = torch.randn(shape, generator=gen).to(dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(dtype)
    torch.testing.assert_close(
        reference.rms_norm(x, weight, 1e-6), llama_rms_norm(x, weight, 1e-6), atol=0, rtol=0
    )
    y, new_residual = reference.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(new_residual, x + residual)
    torch.testing.assert_close(y, llama_rms_norm(x + residual, weight, 1e-5), atol=0, rtol=0)


def rope_cos_sin_cache(max_position: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def llama_rotary(
    x: torch.Tensor, positions: torch.Tensor, head_dim: int, base: float = 10000.0
) -> torch.Tensor:
    """transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb for x = [T, H, D]."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
    rotated = torch.cat([-x[..., head_dim // 2 :], x[..., : head_dim // 2]], dim=-1)
    return x * cos + rotated * sin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_apply_rotary_matches_llama(dtype, head_dim) -> None:
    gen = torch.Generator().manual_seed(7)
    positions = torch.tensor([0, 5, 1, 511, 77, 3])
    query = torch.randn(6, 8, head_dim, generator=gen).to(dtype)
    key = torch.randn(6, 2, head_dim, generator=gen).to(dtype)
    q_out, k_out = reference.apply_rotary(query, key, positions, rope_cos_sin_cache(512, head_dim))
    torch.testing.assert_close(q_out, llama_rotary(query, positions, head_dim), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_out, llama_rotary(key, positions, head_dim), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype) -> None:
    x = torch.randn(5, 2 * 72, generator=torch.Generator().manual_seed(8)).to(dtype)
    gate, up = x[:, :72].double(), x[:, 72:].double()
    expected = gate * torch.sigmoid(gate) * up
    torch.testing.assert_close(reference.silu_and_mul(x).double(), expected, atol=ATOL[dtype] * 2, rtol=1e-2)


def test_matches_transformers_llama_code() -> None:
    """The twins against transformers itself (the model the engine is compared with)."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 3, 64, generator=gen).to(torch.bfloat16)
    norm = llama.LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64, generator=gen))
        torch.testing.assert_close(reference.rms_norm(x, norm.weight, 1e-5), norm(x), atol=0, rtol=0)
    query, key = x, torch.randn(4, 1, 64, generator=gen).to(torch.bfloat16)
    positions = torch.tensor([3, 0, 9, 200])
    cos, sin = rope_cos_sin_cache(256, 64)[positions].chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1).to(torch.bfloat16), torch.cat([sin, sin], -1).to(torch.bfloat16)
    # transformers wants [batch, heads, seq, dim] with cos/sin [batch, seq, dim]: one batch of 4 tokens
    q_hf, k_hf = llama.apply_rotary_pos_emb(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], cos[None], sin[None]
    )
    q_out, k_out = reference.apply_rotary(query, key, positions, rope_cos_sin_cache(256, 64))
    torch.testing.assert_close(q_out, q_hf[0].transpose(0, 1), atol=0, rtol=0)
    torch.testing.assert_close(k_out, k_hf[0].transpose(0, 1), atol=0, rtol=0)
