"""Triton attention over the paged KV cache: varlen causal prefill (`paged_attention`) and the
batch decode hot path (`decode_attention`, split along the sequence; the last split program of
each kv head to finish merges the splits).

Both kernels give one program all the query heads that share a KV head (GQA), so each K/V tile is
read from memory once per program, and both keep the softmax statistics in fp32 in the log2
domain (exp2 with scale * log2(e) folded in). Importing this module needs triton.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gpu_backend.kernels import pdl
from gpu_backend.kernels.pdl import wait_then_release

LOG2_E = 1.4426950408889634
# Finite stand-in for -inf as the running max: a tile whose scores are all masked then gives
# exp2(-inf - NEG_BIG) = 0 instead of exp2(-inf + inf) = NaN.
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _attend_tile(
    q, m, l, acc, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, start, kv_end, q_pos, dims,
    cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over keys [start, start + BLOCK_N) gathered through the block table.

    Without CAUSAL_MASK every key of the step is in range and visible to every row, so (for a
    power-of-two head_dim) the loads go unmasked.
    """
    n = start + tl.arange(0, BLOCK_N)
    in_range = n < kv_end
    if CAUSAL_MASK:
        block_id = tl.load(block_table_ptr + n // PAGE_SIZE, mask=in_range, other=0).to(tl.int64)
    else:
        block_id = tl.load(block_table_ptr + n // PAGE_SIZE).to(tl.int64)
    rows = block_id * cache_stride_block + (n % PAGE_SIZE) * cache_stride_offset + kv_head * cache_stride_h
    kv_ptrs = rows[:, None] + dims[None, :]
    if CAUSAL_MASK or HEAD_DIM != dims.shape[0]:
        kv_mask = in_range[:, None] & (dims[None, :] < HEAD_DIM)
        k = tl.load(k_cache_ptr + kv_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_ptrs, mask=kv_mask, other=0.0)
    else:
        k = tl.load(k_cache_ptr + kv_ptrs)
        v = tl.load(v_cache_ptr + kv_ptrs)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if CAUSAL_MASK:
        visible = (n[None, :] <= q_pos[:, None]) & in_range[None, :]
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l, acc


@triton.jit
def _attend_query_tile(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_table_ptr, tile, q_start, q_len, seq_len, kv_head,
    q_stride_t, q_stride_h, out_stride_t, out_stride_h,
    cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Causal attention of BLOCK_Q query tokens x GROUP heads (row r: token r // GROUP, head r % GROUP)."""
    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    token = tile * BLOCK_Q + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_mask = (rows < BLOCK_Q * GROUP) & (token < q_len)
    io_mask = row_mask[:, None] & (dims[None, :] < HEAD_DIM)
    q_rows = (q_start + token).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * q_stride_t + head[:, None] * q_stride_h + dims[None, :],
                mask=io_mask, other=0.0)
    num_context = seq_len - q_len
    q_pos = num_context + token

    m = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    first_pos = num_context + tile * BLOCK_Q
    kv_end = tl.minimum(first_pos + BLOCK_Q, seq_len)
    # Keys below the tile's first position are visible to every row: whole tiles of them need
    # no mask; the rest (the diagonal) does.
    unmasked_end = (first_pos + 1) // BLOCK_N * BLOCK_N
    for start in range(0, unmasked_end, BLOCK_N):
        m, l, acc = _attend_tile(
            q, m, l, acc, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, start, kv_end, q_pos,
            dims, cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
            HEAD_DIM, PAGE_SIZE, BLOCK_N, False, DOT_PRECISION,
        )
    for start in range(unmasked_end, kv_end, BLOCK_N):
        m, l, acc = _attend_tile(
            q, m, l, acc, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, start, kv_end, q_pos,
            dims, cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
            HEAD_DIM, PAGE_SIZE, BLOCK_N, True, DOT_PRECISION,
        )
    # a row that saw no key (l == 0) is a padding row: write zeros, not NaN
    out = acc / tl.where(l > 0.0, l, 1.0)[:, None]
    tl.store(out_ptr + q_rows[:, None] * out_stride_t + head[:, None] * out_stride_h + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=io_mask)


# Integers that change from batch to batch are not specialized on (Triton would compile a variant
# for each of 1, a multiple of 16, and the rest, while requests wait; see engine/kernel_warmup.py).
@triton.jit(do_not_specialize=["first_seq", "block_tables_stride"])
def _paged_prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, query_start_loc_ptr, seq_lens_ptr, block_tables_ptr, first_seq,
    q_stride_t, q_stride_h, out_stride_t, out_stride_h,
    cache_stride_block, cache_stride_offset, cache_stride_h, block_tables_stride, qk_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    SMALL_Q: tl.constexpr, SMALL_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):
    # Program = (kv head, tile of query tokens, sequence). Tiles run last-first and kv heads vary
    # fastest, so the first wave takes the longest causal tiles of every head (load balance).
    # Sequences before first_seq are not this launch's (decode_attention serves them).
    if USE_PDL:
        wait_then_release()
    kv_head = tl.program_id(0)
    tile = tl.num_programs(1) - 1 - tl.program_id(1)
    seq = tl.program_id(2) + first_seq
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * block_tables_stride
    if q_len <= SMALL_Q:
        # decodes (and other short queries) get one small tile rather than paying for BLOCK_M rows
        if (tile == 0) & (q_len > 0):
            _attend_query_tile(
                q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_table_ptr, 0, q_start, q_len, seq_len,
                kv_head, q_stride_t, q_stride_h, out_stride_t, out_stride_h,
                cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
                HEAD_DIM, GROUP, SMALL_Q, SMALL_M, BLOCK_D, BLOCK_N, PAGE_SIZE, DOT_PRECISION,
            )
    elif tile * BLOCK_Q < q_len:
        _attend_query_tile(
            q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_table_ptr, tile, q_start, q_len, seq_len,
            kv_head, q_stride_t, q_stride_h, out_stride_t, out_stride_h,
            cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
            HEAD_DIM, GROUP, BLOCK_Q, BLOCK_M, BLOCK_D, BLOCK_N, PAGE_SIZE, DOT_PRECISION,
        )


@triton.jit(do_not_specialize=["block_tables_stride"])
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_out_ptr, partial_lse_ptr, split_counters_ptr,
    seq_lens_ptr, block_tables_ptr,
    q_stride_b, q_stride_h, out_stride_b, out_stride_h,
    cache_stride_block, cache_stride_offset, cache_stride_h, block_tables_stride, qk_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr,
    MIN_SPLIT_TOKENS: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
    FUSED_REDUCE: tl.constexpr, GROUP_P: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
):
    if USE_PDL:
        wait_then_release()
    # Program = (sequence, kv head, split): the GROUP query heads of the kv head against one
    # slice of the sequence. Slices are sized from the real seq_len, so the grid (and a CUDA
    # graph of it) depends on shapes only.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_tokens = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_tokens = tl.maximum(split_tokens, MIN_SPLIT_TOKENS)
    start = split * split_tokens
    end = tl.minimum(start + split_tokens, seq_len)

    g = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, BLOCK_D)
    head = kv_head * GROUP + g
    io_mask = (g[:, None] < GROUP) & (dims[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + seq.to(tl.int64) * q_stride_b + head[:, None] * q_stride_h + dims[None, :],
                mask=io_mask, other=0.0)
    m = tl.full([BLOCK_G], NEG_BIG, dtype=tl.float32)
    l = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * block_tables_stride
    q_pos = tl.full([BLOCK_G], 0, dtype=tl.int32) + seq_len - 1
    for tile_start in range(start, end, BLOCK_N):
        m, l, acc = _attend_tile(
            q, m, l, acc, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, tile_start, end, q_pos,
            dims, cache_stride_block, cache_stride_offset, cache_stride_h, qk_scale,
            HEAD_DIM, PAGE_SIZE, BLOCK_N, True, DOT_PRECISION,
        )
    out = acc / tl.where(l > 0.0, l, 1.0)[:, None]
    out_row_ptr = out_ptr + seq.to(tl.int64) * out_stride_b
    if NUM_SPLITS == 1:
        tl.store(out_row_ptr + head[:, None] * out_stride_h + dims[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=io_mask)
    else:
        # partials are [B, Hq, NUM_SPLITS, BLOCK_D] and [B, Hq, NUM_SPLITS]; an empty split has lse -inf
        lse = tl.where(l > 0.0, m + tl.log2(tl.where(l > 0.0, l, 1.0)), float("-inf"))
        first_slot = (seq.to(tl.int64) * tl.num_programs(1) + kv_head) * GROUP * NUM_SPLITS
        slot = first_slot + g * NUM_SPLITS + split
        tl.store(partial_lse_ptr + slot, lse, mask=g < GROUP)
        tl.store(partial_out_ptr + slot[:, None] * BLOCK_D + dims[None, :], out, mask=io_mask)
        if FUSED_REDUCE:
            counter_ptr = split_counters_ptr + seq * tl.num_programs(1) + kv_head
            if _is_last_split(counter_ptr, NUM_SPLITS):
                _merge_splits(
                    partial_out_ptr, partial_lse_ptr, out_row_ptr, out_stride_h, first_slot, kv_head * GROUP,
                    tl.cdiv(seq_len, split_tokens), HEAD_DIM, GROUP, GROUP_P, BLOCK_D, NUM_SPLITS, SPLIT_CHUNK,
                )


@triton.jit
def _is_last_split(counter_ptr, NUM_SPLITS: tl.constexpr):
    """True in exactly one of the NUM_SPLITS programs sharing `counter_ptr`: the last to arrive.

    The barrier orders every thread's partial stores before the (one-thread) release of the
    atomic; its acquire orders the other programs' stores before the winner's loads. The winner
    puts the counter back to 0, so each launch leaves the buffer as it found it.
    """
    tl.debug_barrier()
    num_arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    is_last = num_arrived == NUM_SPLITS - 1
    if is_last:
        tl.store(counter_ptr, 0)
    return is_last


@triton.jit
def _merge_splits(
    partial_out_ptr, partial_lse_ptr, out_row_ptr, out_stride_h, first_slot, first_head, num_live_splits,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
):
    """_decode_reduce_kernel's merge for the GROUP q heads of one kv head, SPLIT_CHUNK splits a step.

    Only the first num_live_splits splits hold keys; the empty rest (weight 0) are not read. The
    partials come from other programs of this launch: besides the acquire in _is_last_split, they
    are read through L2 (.cg), never from a line this SM's L1 may hold from before.
    """
    g = tl.arange(0, GROUP_P)
    dims = tl.arange(0, BLOCK_D)
    head_slot = first_slot + g * NUM_SPLITS
    g_mask = g < GROUP
    splits = tl.arange(0, NUM_SPLITS)
    lse = tl.load(partial_lse_ptr + head_slot[:, None] + splits[None, :],
                  mask=g_mask[:, None] & (splits < num_live_splits)[None, :], other=float("-inf"), cache_modifier=".cg")
    lse_max = tl.max(lse, axis=1)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # seq_len 0: every split empty
    total = tl.sum(tl.exp2(lse - lse_max[:, None]), axis=1)
    acc = tl.zeros([GROUP_P, BLOCK_D], dtype=tl.float32)
    for chunk_start in range(0, num_live_splits, SPLIT_CHUNK):
        split = chunk_start + tl.arange(0, SPLIT_CHUNK)
        slot = head_slot[:, None] + split[None, :]
        live = g_mask[:, None] & (split < num_live_splits)[None, :]
        chunk_lse = tl.load(partial_lse_ptr + slot, mask=live, other=float("-inf"), cache_modifier=".cg")
        partial = tl.load(partial_out_ptr + slot[:, :, None] * BLOCK_D + dims[None, None, :],
                          mask=live[:, :, None] & (dims < HEAD_DIM)[None, None, :], other=0.0, cache_modifier=".cg")
        acc += tl.sum(partial * tl.exp2(chunk_lse - lse_max[:, None])[:, :, None], axis=1)
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    tl.store(out_row_ptr + (first_head + g)[:, None] * out_stride_h + dims[None, :],
             out.to(out_row_ptr.dtype.element_ty), mask=g_mask[:, None] & (dims < HEAD_DIM)[None, :])


@triton.jit
def _decode_reduce_kernel(
    partial_out_ptr, partial_lse_ptr, out_ptr, out_stride_b, out_stride_h, num_q_heads, head_dim,
    NUM_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Merge the splits of one (sequence, q head): weights are each split's softmax mass."""
    if USE_PDL:
        wait_then_release()
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, BLOCK_D)
    base = (seq * num_q_heads + head) * NUM_SPLITS
    lse = tl.load(partial_lse_ptr + base + splits)
    lse_max = tl.max(lse, axis=0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # seq_len 0: every split empty
    weight = tl.exp2(lse - lse_max)
    partial = tl.load(partial_out_ptr + (base + splits)[:, None] * BLOCK_D + dims[None, :])
    total = tl.sum(weight, axis=0)
    out = tl.sum(partial * weight[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + seq * out_stride_b + head * out_stride_h + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < head_dim)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and warps of one kernel launch: block_m query rows x block_n keys per step."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def prefill_config(block_d: int, dtype: torch.dtype) -> LaunchConfig:
    if block_d > 128 or dtype == torch.float32:  # bigger tiles would not fit in shared memory
        return LaunchConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    # H100, Llama-3.1-8B shapes, bf16: steadiest of a sweep over two machines, ~355 TFLOP/s on a
    # 4096-token prompt (128x64 tiles: 320-330, 64x64: 335-340, 2 stages: 310-360)
    return LaunchConfig(block_m=128, block_n=128, num_warps=8, num_stages=3)


def decode_config(block_d: int, dtype: torch.dtype) -> LaunchConfig:
    # H100: 64 keys a step, 3 stages in flight; 128-key steps win below 2k tokens, lose 12% at 64x8192
    block_n = 32 if (block_d > 128 or dtype == torch.float32) else 64
    return LaunchConfig(block_m=16, block_n=block_n, num_warps=4, num_stages=3)


# Decode splits: enough programs for PROGRAMS_PER_SM on every SM, slices of >= MIN_SPLIT_TOKENS
# (H100: 128 took batch-1 decode at 512/2048 tokens from 11.2/12.8 us to 8.1/10.5 us vs 256).
PROGRAMS_PER_SM = 2
MIN_SPLIT_TOKENS = 128
MAX_SPLITS = 64
# The last split program of each (sequence, kv head) merges the splits itself (H100, batch-1
# Llama-8B: the separate reduce kernel cost ~1.4 us a layer plus a kernel boundary). False keeps
# the two-kernel path, so a benchmark can compare the two in one run.
FUSED_SPLIT_REDUCE = True
# A launch splits only with fewer than PROGRAMS_PER_SM * SMs (sequence, kv head) pairs, so this
# many counters are never outgrown on real GPUs, nor allocated during a CUDA graph capture.
MIN_SPLIT_COUNTERS = 4096
# Merge tile of the fused reduce: GROUP_P x SPLIT_CHUNK x BLOCK_D fp32 partials per step. Bigger
# tiles take fewer serial steps but more registers (sm_90 compile, Llama-8B shapes: 2048 / 4096 /
# 8192 give the decode kernel 80 / 105 / 128 registers; 92 with the reduce kernel).
MERGE_TILE_ELEMENTS = 4096

_split_counters: dict[torch.device, torch.Tensor] = {}
_outgrown_split_counters: list[torch.Tensor] = []  # a captured CUDA graph may still count in one


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    # the interpreter runs on CPU tensors: pretend to a small GPU so splitting is still exercised
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 models get true fp32 products; tf32 would put them 1e-3 away from the torch twin
    return "ieee" if dtype == torch.float32 else "tf32"


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
    """Varlen causal attention over the paged cache (prompts, prompt chunks and decodes mixed).

    The first `num_decodes` sequences (one new token each, so query rows 0..num_decodes-1) go to
    the decode kernel, which reads each K/V tile once for the whole GQA group at full bandwidth;
    the prefill kernel's grid covers only the sequences after them.
    """
    del max_seq_len  # the kernels read each sequence's length themselves
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0 or max_query_len == 0:
        return out
    if num_decodes > 0:
        decode_attention(query[:num_decodes], k_cache, v_cache, seq_lens[:num_decodes], block_tables[:num_decodes],
                         scale, out=out[:num_decodes])
        if num_decodes == num_seqs:
            return out
    block_d = triton.next_power_of_2(head_dim)
    config = prefill_config(block_d, query.dtype)
    small_m = max(16, triton.next_power_of_2(group))
    # no taller tiles than the longest query needs (rows beyond q_len * group are wasted work)
    block_m = max(min(config.block_m, triton.next_power_of_2(max_query_len * group)), small_m)
    block_q, small_q = block_m // group, small_m // group
    grid = (num_kv_heads, triton.cdiv(max_query_len, block_q), num_seqs - num_decodes)
    use_pdl = pdl.enabled(query)
    _paged_prefill_kernel[grid](
        query, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables, num_decodes,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), scale * LOG2_E,
        HEAD_DIM=head_dim, GROUP=group, BLOCK_Q=block_q, BLOCK_M=block_m, SMALL_Q=small_q, SMALL_M=small_m,
        BLOCK_D=block_d, BLOCK_N=config.block_n, PAGE_SIZE=k_cache.shape[1],
        DOT_PRECISION=_dot_precision(query.dtype), USE_PDL=use_pdl,
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl.launch_options(use_pdl),
    )
    return out


def _num_splits(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Splits along the sequence: enough programs to fill the GPU, no slice shorter than MIN_SPLIT_TOKENS."""
    wanted = math.ceil(PROGRAMS_PER_SM * _num_sms(device) / (num_seqs * num_kv_heads))
    by_length = math.ceil(max_context / MIN_SPLIT_TOKENS)
    return triton.next_power_of_2(max(1, min(wanted, by_length, MAX_SPLITS)))


def _split_counters_for(device: torch.device, num_counters: int) -> torch.Tensor | None:
    """Arrival counters of the fused split reduce, one per (sequence, kv head), shared by every launch.

    Zeroed once at allocation, never memset again: the program that merges a (sequence, kv head)
    puts its counter back to 0, so every launch and CUDA graph replay leaves the buffer all zeros.
    That holds while launches on a device do not overlap (one stream). None when the buffer would
    have to be allocated during a CUDA graph capture, whose zeroing would be recorded, not run.
    """
    counters = _split_counters.get(device)
    if counters is not None and counters.numel() >= num_counters:
        return counters
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if counters is not None:
        _outgrown_split_counters.append(counters)
    counters = torch.zeros(max(MIN_SPLIT_COUNTERS, num_counters), dtype=torch.int32, device=device)
    _split_counters[device] = counters
    return counters


def decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per sequence at position seq_lens[i] - 1; padded rows (seq_len 0) give zeros.

    Writes into `out` (a [num_seqs, Hq, D] tensor or view) when given."""
    num_seqs, num_q_heads, head_dim = query.shape
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    block_d = triton.next_power_of_2(head_dim)
    config = decode_config(block_d, query.dtype)
    # the block-table width bounds the context without reading seq_lens back to the host
    num_splits = _num_splits(num_seqs, num_kv_heads, block_tables.shape[1] * page_size, query.device)
    partial_out = partial_lse = out
    if num_splits > 1:
        partial_shape = (num_seqs, num_q_heads, num_splits)
        partial_out = torch.empty((*partial_shape, block_d), dtype=torch.float32, device=query.device)
        partial_lse = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    split_counters = None
    if num_splits > 1 and FUSED_SPLIT_REDUCE:
        split_counters = _split_counters_for(query.device, num_seqs * num_kv_heads)
    fused_reduce = split_counters is not None
    group_p = triton.next_power_of_2(group)
    use_pdl = pdl.enabled(query)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, k_cache, v_cache, out, partial_out, partial_lse, split_counters if fused_reduce else out,
        seq_lens, block_tables, query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), scale * LOG2_E,
        HEAD_DIM=head_dim, GROUP=group, BLOCK_G=max(config.block_m, group_p),
        BLOCK_D=block_d, BLOCK_N=config.block_n, PAGE_SIZE=page_size, NUM_SPLITS=num_splits,
        MIN_SPLIT_TOKENS=triton.cdiv(MIN_SPLIT_TOKENS, config.block_n) * config.block_n,
        DOT_PRECISION=_dot_precision(query.dtype), USE_PDL=use_pdl, FUSED_REDUCE=fused_reduce, GROUP_P=group_p,
        SPLIT_CHUNK=min(num_splits, max(1, MERGE_TILE_ELEMENTS // (group_p * block_d))),
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl.launch_options(use_pdl),
    )
    if num_splits > 1 and not fused_reduce:
        _decode_reduce_kernel[(num_seqs, num_q_heads)](
            partial_out, partial_lse, out, out.stride(0), out.stride(1), num_q_heads, head_dim,
            NUM_SPLITS=num_splits, BLOCK_D=block_d, USE_PDL=use_pdl, num_warps=2, **pdl.launch_options(use_pdl),
        )
    return out
