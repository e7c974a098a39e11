"""Triton row and elementwise kernels: RMS norm (plain and fused with the residual add), rotary
embedding (alone, or fused with the KV-cache store), SiLU-and-mul, the KV-cache store, and the
greedy sampler's argmax over the vocab.

Each one reads its inputs once and writes its outputs once (one program per token row; argmax
splits each row over many), and mirrors the rounding steps of its torch twin in reference.py so
the two agree to the last bit or so in bf16/fp16 (argmax exactly). Importing this module needs
triton; gpu_backend.kernels imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gpu_backend.kernels import pdl
from gpu_backend.kernels.pdl import wait_then_release


@triton.jit
def _store_kv_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    key_stride_t, key_stride_h, value_stride_t, value_stride_h,
    cache_stride_block, cache_stride_offset, cache_stride_h,
    num_kv_heads, head_dim,
    BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:
        wait_then_release()
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    # padding tokens (slot -1) store nothing: no head passes the mask
    mask = (heads < tl.where(slot >= 0, num_kv_heads, 0)) & (dims < head_dim)
    dest = (slot // BLOCK_SIZE) * cache_stride_block + (slot % BLOCK_SIZE) * cache_stride_offset
    dest += heads * cache_stride_h + dims
    k = tl.load(key_ptr + token * key_stride_t + heads * key_stride_h + dims, mask=mask)
    tl.store(k_cache_ptr + dest, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    v = tl.load(value_ptr + token * value_stride_t + heads * value_stride_h + dims, mask=mask)
    tl.store(v_cache_ptr + dest, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each token's K/V at its slot; slots < 0 are skipped (padding). Key/value may be views."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    assert key.stride(-1) == 1 and value.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    use_pdl = pdl.enabled(key)
    _store_kv_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads, head_dim,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim), USE_PDL=use_pdl, **pdl.launch_options(use_pdl),
    )


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr,
    x_stride, residual_stride, hidden_size, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:
        wait_then_release()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # the sum is rounded to the activation dtype first, as `x + residual` is in torch
        r = tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + row * hidden_size + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / hidden_size + eps)
    normed = (x32 * rstd).to(x_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    y = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * hidden_size + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, hidden] with unit stride along hidden, copying only when it must."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden_size = x.shape[-1]
    x2 = _rows(x)
    res2 = _rows(residual) if residual is not None else x2
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    if x2.shape[0] == 0:
        return out, new_residual
    block = triton.next_power_of_2(hidden_size)
    use_pdl = pdl.enabled(x2)
    _rms_norm_kernel[(x2.shape[0],)](
        x2, res2, weight, out, new_residual if new_residual is not None else out,
        x2.stride(0), res2.stride(0), hidden_size, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, USE_PDL=use_pdl,
        num_warps=min(max(block // 512, 1), 16), **pdl.launch_options(use_pdl),
    )
    return out, new_residual


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim (any leading shape), transformers' order of operations."""
    return _launch_rms_norm(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one read of x and residual."""
    out, new_residual = _launch_rms_norm(x, residual, weight, eps)
    assert new_residual is not None
    return out, new_residual


@triton.jit
def _rotate_heads(
    src_ptr, src_stride_h, dst_ptr, dst_stride_h, num_heads, cos, sin,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    """x*cos + rotate_half(x)*sin for the heads of one token, rounding like the torch twin.

    src_ptr/dst_ptr point at the token's head 0; num_heads <= 0 writes nothing.
    """
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (dims < HALF)
    src = src_ptr + heads * src_stride_h + dims
    dst = dst_ptr + heads * dst_stride_h + dims
    dtype = dst_ptr.dtype.element_ty
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    out1 = (x1 * cos).to(dtype).to(tl.float32) + (-x2 * sin).to(dtype).to(tl.float32)
    out2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    tl.store(dst, out1.to(dtype), mask=mask)
    tl.store(dst + HALF, out2.to(dtype), mask=mask)


@triton.jit
def _cos_sin(positions_ptr, cos_sin_ptr, token, cos_sin_stride, dtype: tl.constexpr,
             HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    row = cos_sin_ptr + pos * cos_sin_stride + dims
    # cos/sin are cast to the activation dtype first, as transformers does
    cos = tl.load(row, mask=dims < HALF, other=0.0).to(dtype).to(tl.float32)
    sin = tl.load(row + HALF, mask=dims < HALF, other=0.0).to(dtype).to(tl.float32)
    return cos, sin


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cos_sin_ptr,
    q_stride_t, q_stride_h, k_stride_t, k_stride_h, cos_sin_stride,
    num_q_heads, num_kv_heads,
    HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:
        wait_then_release()
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(positions_ptr, cos_sin_ptr, token, cos_sin_stride, q_out_ptr.dtype.element_ty,
                        HALF, BLOCK_HALF)
    _rotate_heads(q_ptr + token * q_stride_t, q_stride_h, q_out_ptr + token * num_q_heads * 2 * HALF, 2 * HALF,
                  num_q_heads, cos, sin, HALF, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_ptr + token * k_stride_t, k_stride_h, k_out_ptr + token * num_kv_heads * 2 * HALF, 2 * HALF,
                  num_kv_heads, cos, sin, HALF, BLOCK_HK, BLOCK_HALF)


def apply_rotary(
    query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding of q and k in one launch; q/k may be strided views of a qkv output."""
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    assert query.stride(-1) == 1 and key.stride(-1) == 1 and cos_sin_cache.stride(-1) == 1
    q_out, k_out = torch.empty(query.shape, dtype=query.dtype, device=query.device), torch.empty(
        key.shape, dtype=key.dtype, device=key.device
    )
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    use_pdl = pdl.enabled(query)
    _rotary_kernel[(num_tokens,)](
        query, key, q_out, k_out, positions, cos_sin_cache,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), cos_sin_cache.stride(0),
        num_q_heads, num_kv_heads,
        HALF=half,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HK=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(half), USE_PDL=use_pdl, **pdl.launch_options(use_pdl),
    )
    return q_out, k_out


@triton.jit
def _rotary_store_kv_kernel(
    q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, slot_mapping_ptr, cos_sin_ptr,
    q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h, cos_sin_stride,
    cache_stride_block, cache_stride_offset, cache_stride_h, num_q_heads, num_kv_heads, head_dim,
    HALF: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:
        wait_then_release()
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(positions_ptr, cos_sin_ptr, token, cos_sin_stride, q_out_ptr.dtype.element_ty,
                        HALF, BLOCK_HALF)
    _rotate_heads(q_ptr + token * q_stride_t, q_stride_h, q_out_ptr + token * num_q_heads * 2 * HALF, 2 * HALF,
                  num_q_heads, cos, sin, HALF, BLOCK_HQ, BLOCK_HALF)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    cache_row = (slot // PAGE_SIZE) * cache_stride_block + (slot % PAGE_SIZE) * cache_stride_offset
    stored_heads = tl.where(slot >= 0, num_kv_heads, 0)  # padding tokens (slot -1) store nothing
    _rotate_heads(k_ptr + token * k_stride_t, k_stride_h, k_cache_ptr + cache_row, cache_stride_h,
                  stored_heads, cos, sin, HALF, BLOCK_HK, BLOCK_HALF)
    heads = tl.arange(0, BLOCK_HK)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < stored_heads) & (dims < head_dim)
    v = tl.load(v_ptr + token * v_stride_t + heads * v_stride_h + dims, mask=mask)
    tl.store(v_cache_ptr + cache_row + heads * cache_stride_h + dims, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


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
    """apply_rotary then store_kv_cache in one launch: returns the rotated query; the rotated key
    goes straight into the cache (never to a tensor of its own). q/k/v may be strided views."""
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    assert query.stride(-1) == 1 and key.stride(-1) == 1 and value.stride(-1) == 1
    assert cos_sin_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    q_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0:
        return q_out
    half = head_dim // 2
    use_pdl = pdl.enabled(query)
    _rotary_store_kv_kernel[(num_tokens,)](
        query, key, value, q_out, k_cache, v_cache, positions, slot_mapping, cos_sin_cache,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        cos_sin_cache.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_q_heads, num_kv_heads, head_dim,
        HALF=half, PAGE_SIZE=k_cache.shape[1],
        BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(half), BLOCK_D=triton.next_power_of_2(head_dim),
        USE_PDL=use_pdl, **pdl.launch_options(use_pdl),
    )
    return q_out


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_stride, inter_size, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:
        wait_then_release()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter_size
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + inter_size + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    # silu rounds to the dtype before the product, as F.silu(gate) * up does
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * inter_size + cols, (silu * up).to(dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:] for x = [gate | up], any leading shape."""
    inter_size = x.shape[-1] // 2
    x2 = _rows(x)
    out = torch.empty((*x.shape[:-1], inter_size), dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return out
    block = min(triton.next_power_of_2(inter_size), 2048)
    grid = (x2.shape[0], triton.cdiv(inter_size, block))
    use_pdl = pdl.enabled(x2)
    _silu_and_mul_kernel[grid](x2, out, x2.stride(0), inter_size, BLOCK=block, USE_PDL=use_pdl, num_warps=4,
                               **pdl.launch_options(use_pdl))
    return out


ARGMAX_CHUNK = 2048  # logits per program: a 128256 vocab row spreads over 63 programs, not one SM
MIN_PACKED = tl.constexpr(-(2**63))  # below every packed (key, index): masked lanes never win


@triton.jit
def _order_key(x):
    """An int32 ordered like x.float() is by torch.argmax: -0.0 ties with 0.0, NaN above +inf."""
    x = x.to(tl.float32)
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats count down as their bits go up
    return tl.where(x != x, 0x7FFFFFFF, key)  # noqa: PLR0124 (only NaN differs from itself)


@triton.jit
def _pack(x, index):
    """(key of x, then the lower index) in one int64, so a single max picks the first largest."""
    return (_order_key(x).to(tl.int64) << 32) | (0xFFFFFFFF - index.to(tl.int64))


@triton.jit
def _unpack_index(packed):
    return 0xFFFFFFFF - (packed & 0xFFFFFFFF)


@triton.jit
def _argmax_chunk_kernel(
    logits_ptr, partials_ptr, out_ptr, row_stride, vocab_size, num_chunks,
    CHUNK: tl.constexpr, ONE_CHUNK: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:
        wait_then_release()
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    mask = cols < vocab_size
    x = tl.load(logits_ptr + row * row_stride + cols, mask=mask, other=0.0)
    best = tl.max(tl.where(mask, _pack(x, cols), MIN_PACKED), axis=0)
    if ONE_CHUNK:  # the row fits one program: no second stage
        tl.store(out_ptr + row, _unpack_index(best))
    else:
        tl.store(partials_ptr + row * num_chunks + chunk, best)


@triton.jit
def _argmax_finish_kernel(partials_ptr, out_ptr, num_chunks, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:
        wait_then_release()
    row = tl.program_id(0).to(tl.int64)
    chunks = tl.arange(0, BLOCK)
    packed = tl.load(partials_ptr + row * num_chunks + chunks, mask=chunks < num_chunks, other=MIN_PACKED)
    tl.store(out_ptr + row, _unpack_index(tl.max(packed, axis=0)))


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax(logits.float(), dim=-1), read straight from bf16/fp16/fp32 logits.

    Exact and deterministic: the first largest index wins ties, a row with a NaN gives its first
    NaN (as torch does), an all -inf row gives 0. Two launches: each program reduces one chunk
    of a row to a packed (key, index), then one program per row reduces the row's chunks; no
    state survives a call, so it is safe in CUDA graphs and on any stream.
    """
    x2 = _rows(logits)
    num_rows, vocab_size = x2.shape
    assert vocab_size > 0, "argmax over an empty vocab"
    out = torch.empty(logits.shape[:-1], dtype=torch.int64, device=logits.device)
    if num_rows == 0:
        return out
    chunk = min(ARGMAX_CHUNK, triton.next_power_of_2(vocab_size))
    num_chunks = triton.cdiv(vocab_size, chunk)
    partials = out if num_chunks == 1 else torch.empty((num_rows, num_chunks), dtype=torch.int64,
                                                       device=logits.device)
    use_pdl = pdl.enabled(x2)
    _argmax_chunk_kernel[(num_rows, num_chunks)](
        x2, partials, out, x2.stride(0), vocab_size, num_chunks,
        CHUNK=chunk, ONE_CHUNK=num_chunks == 1, USE_PDL=use_pdl, num_warps=4, **pdl.launch_options(use_pdl),
    )
    if num_chunks > 1:
        _argmax_finish_kernel[(num_rows,)](partials, out, num_chunks, BLOCK=triton.next_power_of_2(num_chunks),
                                           USE_PDL=use_pdl, num_warps=1, **pdl.launch_options(use_pdl))
    return out
