"""``y = x W^T + b`` for one row of x (batch-1 decode): a Triton GEMV, else torch's matmul.

At one row a linear layer only streams its weight; on an H100 the chain of Llama-8B decode GEMVs
in a CUDA graph reads 2.96 TB/s, the card's copy bandwidth (benchmarks/gemv_chain.py; cuBLAS
2.71). Each program reduces BLOCK_N rows of W over the whole of K, so no split-K pass or second
launch is needed. Launched with PDL (pdl.py), each program's first weight tile is already loading
while the kernel before it finishes.

The GEMV can also compute its input itself, which saves a launch and a round trip through
memory per fused op (docs/engine.md, "Kernels"):
- `rms_norm_linear`: the (residual add and) RMS norm that precedes qkv and gate_up. Every
  program recomputes the row's norm from the row (a few KB from L2); program 0 writes the new
  residual.
- `silu_and_mul_linear`: silu(gate) * up, the input of down_proj.
Both round exactly where their separate kernels do. Other shapes run the separate kernels.

A weight may also be an ECF ``CompressedWeight`` (docs/weights-format.md; gpu_backend/weights/packed.py),
which stays coded in GPU memory: 1.5 bytes per weight instead of 2. At one row the same GEMV kernel
decodes each tile where it would load a bf16 tile (the ``ECF`` constexpr): the sign-mantissa byte
plane, the exponent nibble and its row's 16-entry table, and the row's escapes in order from its
CSR offset. The tiles, and so the summation, are the bf16 kernel's, so the output is meant to be
bit for bit the bf16 GEMV's on the decoded weight (checked under Triton's interpreter; on a GPU the
compiler picks the tile's register layout from its loads, which the CUDA tests check). Several
rows decode the whole weight into the model's scratch buffer (`decode_to_scratch`) and run what a
bf16 weight runs on it, exact by construction; `FUSED_ECF_DECODE = False` does so at one row too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from gpu_backend.kernels import pdl, triton_ops
from gpu_backend.kernels.pdl import wait_then_release
from gpu_backend.weights.packed import CompressedWeight

_GEMV_DTYPES = (torch.bfloat16, torch.float16)
Weight = torch.Tensor | CompressedWeight
# False: a compressed weight at one row is decoded into its scratch buffer and the bf16 GEMV runs on
# that (exact by construction, but the weight is written and read dense once more)
FUSED_ECF_DECODE = True
PLAIN, RMS_NORM, SILU_MUL = 0, 1, 2  # what the GEMV does to its input first


@triton.jit
def _input_chunk(x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype: tl.constexpr,
                 PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """Columns c of the GEMV's input, in fp32, rounded as the separate kernels round them."""
    ok = c < K
    if PROLOGUE == 1:
        s = tl.load(x_ptr + c, mask=ok, other=0.0)
        if HAS_RESIDUAL:
            s = (s.to(tl.float32) + tl.load(res_ptr + c, mask=ok, other=0.0).to(tl.float32)).to(dtype)
        normed = (s.to(tl.float32) * rstd).to(dtype)
        w = tl.load(norm_w_ptr + c, mask=ok, other=0.0)
        return (normed.to(tl.float32) * w.to(tl.float32)).to(dtype).to(tl.float32)
    elif PROLOGUE == 2:
        gate = tl.load(x_ptr + c, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + K + c, mask=ok, other=0.0).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        return (silu * up).to(dtype).to(tl.float32)
    else:
        return tl.load(x_ptr + c, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _ecf_tile(w_rows, index_rows, table_rows, escape_values_ptr, run, ok, c):
    """A bfloat16 weight tile decoded from its ECF planes (docs/weights-format.md), and the rows'
    running escape positions moved past it. ``run[r]`` is the escape-list entry of row r's next
    escape: escapes are in column order within a row, so the tile's k-th escape of row r is
    entry run[r] + k, with no need to read their columns."""
    # 8 bytes a thread, as a bf16 tile loads 8 weights a thread: the same register layout, so the
    # same reduction order (a byte load alone would take 16 a thread)
    top = tl.load(w_rows + tl.max_contiguous(c, 8)[None, :], mask=ok, other=0).to(tl.int32)
    packed = tl.load(index_rows + (c // 2)[None, :], mask=ok, other=0).to(tl.int32)
    index = (packed >> ((c % 2) * 4)[None, :]) & 0xF
    exponent = tl.load(table_rows + index, mask=ok, other=0).to(tl.int32)
    bits = ((top & 0x80) << 8) | (exponent << 7) | (top & 0x7F)
    escaped = ((index == 15) & ok).to(tl.int32)
    count = tl.sum(escaped, axis=1)
    if tl.sum(count, axis=0) > 0:
        entry = run[:, None] + tl.cumsum(escaped, axis=1) - 1
        value = tl.load(escape_values_ptr + entry, mask=escaped != 0, other=0).to(tl.int32) & 0xFFFF
        bits = tl.where(escaped != 0, value, bits)
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), run + count


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, res_ptr, norm_w_ptr, new_res_ptr, N, K, stride_wn, eps,
                 index_ptr, tables_ptr, row_tables_ptr, escape_offsets_ptr, escape_values_ptr, stride_in,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PROLOGUE: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, BLOCK_ROW: tl.constexpr, USE_PDL: tl.constexpr, ECF: tl.constexpr):
    """ECF: w_ptr is the weight's sign-mantissa plane and each tile is decoded where a bf16 tile is
    loaded; everything else, tiling and summation order included, is the bf16 kernel's."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows[:, None] * stride_wn
    dtype = y_ptr.dtype.element_ty
    # The weights depend on no earlier kernel: the first tile is in flight before the wait.
    if ECF:
        index_rows = index_ptr + rows[:, None] * stride_in
        table_rows = tables_ptr + tl.load(row_tables_ptr + rows, mask=row_ok, other=0).to(tl.int32)[:, None] * 16
        run = tl.load(escape_offsets_ptr + rows, mask=row_ok, other=0)
        w, run = _ecf_tile(w_rows, index_rows, table_rows, escape_values_ptr, run,
                           row_ok[:, None] & (cols < K)[None, :], cols)
    else:
        w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    if USE_PDL:
        wait_then_release()
    rstd = 0.0
    if PROLOGUE == 1:
        # the whole row for the norm's statistic, summed as _rms_norm_kernel sums it
        everything = tl.arange(0, BLOCK_ROW)
        s = tl.load(x_ptr + everything, mask=everything < K, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + everything, mask=everything < K, other=0.0)
            s = (s.to(tl.float32) + r.to(tl.float32)).to(dtype)
            if tl.program_id(0) == 0:
                tl.store(new_res_ptr + everything, s, mask=everything < K)
        s32 = s.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(s32 * s32, axis=0) / K + eps)
    x = _input_chunk(x_ptr, res_ptr, norm_w_ptr, cols, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL)
    acc = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        c = k0 + cols
        if ECF:
            w, run = _ecf_tile(w_rows, index_rows, table_rows, escape_values_ptr, run,
                               row_ok[:, None] & (c < K)[None, :], c)
        else:
            w = tl.load(w_rows + c[None, :], mask=row_ok[:, None] & (c < K)[None, :], other=0.0)
        x = _input_chunk(x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, acc.to(dtype), mask=row_ok)


@triton.jit
def _ecf_decode_kernel(w_ptr, index_ptr, tables_ptr, row_tables_ptr, out_ptr, N, K, stride_in,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A whole bfloat16 weight decoded into ``out`` (int16 bits), escapes left for _ecf_escape_kernel."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < N
    ok = row_ok[:, None] & (c < K)[None, :]
    top = tl.load(w_ptr + rows[:, None] * K + c[None, :], mask=ok, other=0).to(tl.int32)
    packed = tl.load(index_ptr + rows[:, None] * stride_in + (c // 2)[None, :], mask=ok, other=0).to(tl.int32)
    index = (packed >> ((c % 2) * 4)[None, :]) & 0xF
    table_rows = tables_ptr + tl.load(row_tables_ptr + rows, mask=row_ok, other=0).to(tl.int32)[:, None] * 16
    exponent = tl.load(table_rows + index, mask=ok, other=0).to(tl.int32)
    bits = ((top & 0x80) << 8) | (exponent << 7) | (top & 0x7F)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + c[None, :], bits.to(tl.int16), mask=ok)


@triton.jit
def _ecf_escape_kernel(escape_rows_ptr, escape_cols_ptr, escape_values_ptr, out_ptr, E, K, BLOCK: tl.constexpr):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = j < E
    r = tl.load(escape_rows_ptr + j, mask=ok, other=0).to(tl.int64)
    c = tl.load(escape_cols_ptr + j, mask=ok, other=0)
    tl.store(out_ptr + r * K + c, tl.load(escape_values_ptr + j, mask=ok, other=0), mask=ok)


def _block_n(n: int, k: int) -> int:
    # Tile heights that won the sweep on an H100 at the Llama-8B shapes: many short rows for the
    # LM head, taller tiles for the wide gate_up/qkv projections, 8 otherwise.
    if n >= 65536:
        return 4
    return 16 if n >= 6144 and k <= 4096 else 8


def _gemv_fits(x: torch.Tensor, weight: Weight) -> bool:
    if isinstance(weight, CompressedWeight):  # the ECF decode in the GEMV makes bfloat16 only
        return (FUSED_ECF_DECODE and x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.dtype == torch.bfloat16
                and weight.dtype == torch.bfloat16)
    return (x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.dtype in _GEMV_DTYPES
            and weight.dtype == x.dtype and weight.stride(1) == 1)


def _gemv(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None, prologue: int = PLAIN,
          residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
          new_residual: torch.Tensor | None = None) -> torch.Tensor:
    n, k = weight.shape
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    block_n = _block_n(n, k)
    use_pdl = pdl.enabled(x)
    if isinstance(weight, CompressedWeight):
        w, stride_wn, ecf = weight.sign_mantissa[0], k, True
        ecf_args = (weight.exponent_index, weight.tables, weight.row_tables, weight.escape_row_offsets,
                    weight.escape_values, weight.exponent_index.stride(0))
    else:
        w, stride_wn, ecf = weight, weight.stride(0), False
        ecf_args = (w, w, w, w, w, 0)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, bias if bias is not None else x, y,
        residual if residual is not None else x, norm_weight if norm_weight is not None else x,
        new_residual if new_residual is not None else y, n, k, stride_wn, eps, *ecf_args,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=1024, PROLOGUE=prologue,
        HAS_RESIDUAL=residual is not None, BLOCK_ROW=triton.next_power_of_2(k) if prologue == RMS_NORM else 1,
        USE_PDL=use_pdl, num_warps=8, ECF=ecf, **pdl.launch_options(use_pdl),
    )
    return y


def decode_to_scratch(weight: CompressedWeight) -> torch.Tensor:
    """The dense weight, decoded into its model's scratch buffer (valid until the next decode; a
    new tensor without one): the matmul for several rows (prefill, batched decode) then runs on it."""
    if weight.dtype != torch.bfloat16:
        return weight.decode()
    n, k = weight.shape
    if weight.scratch is not None:
        out = weight.scratch[:n * k].view(n, k)
    else:
        out = torch.empty((n, k), dtype=weight.dtype, device=weight.device)
    bits = out.view(torch.int16)
    _ecf_decode_kernel[(triton.cdiv(n, 32), triton.cdiv(k, 256))](
        weight.sign_mantissa[0], weight.exponent_index, weight.tables, weight.row_tables, bits, n, k,
        weight.exponent_index.stride(0), BLOCK_N=32, BLOCK_K=256, num_warps=8)
    if weight.num_escapes:
        _ecf_escape_kernel[(triton.cdiv(weight.num_escapes, 1024),)](
            weight.escape_rows, weight.escape_cols, weight.escape_values, bits, weight.num_escapes, k, BLOCK=1024)
    return out


def _decoded_unless_fused(x: torch.Tensor, weight: Weight) -> Weight:
    """A compressed weight the ECF GEMV will not take, decoded into scratch: then every path runs as
    it does on a bf16 weight (the bf16 GEMV at one row, torch's matmul for several)."""
    if isinstance(weight, CompressedWeight) and not _gemv_fits(x, weight):
        return decode_to_scratch(weight)
    return weight


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` dense, or compressed (ECF): decoded inside the GEMV for one row, else into scratch."""
    weight = _decoded_unless_fused(x, weight)
    if not _gemv_fits(x, weight):
        return F.linear(x, weight, bias)
    return _gemv(x.contiguous(), weight, bias)


def rms_norm_linear(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
    weight: Weight, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(x + residual)), x + residual); without a residual, (linear(rms_norm(x)), x)."""
    weight = _decoded_unless_fused(x, weight)
    fits = (_gemv_fits(x, weight) and norm_weight.dtype == x.dtype and x.shape[-1] <= 16384
            and (residual is None or residual.dtype == x.dtype))
    if not fits:
        if residual is None:
            return linear(triton_ops.rms_norm(x, norm_weight, eps), weight, bias), x
        normed, new_residual = triton_ops.fused_add_rms_norm(x, residual, norm_weight, eps)
        return linear(normed, weight, bias), new_residual
    x = x.contiguous()
    if residual is None:
        return _gemv(x, weight, bias, RMS_NORM, norm_weight=norm_weight, eps=eps), x
    new_residual = torch.empty_like(x)
    y = _gemv(x, weight, bias, RMS_NORM, residual.contiguous(), norm_weight, eps, new_residual)
    return y, new_residual


def silu_and_mul_linear(gate_up: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """linear(silu(gate) * up) for gate_up = [gate | up]."""
    weight = _decoded_unless_fused(gate_up, weight)
    if not _gemv_fits(gate_up, weight) or gate_up.shape[-1] != 2 * weight.shape[1]:
        return linear(triton_ops.silu_and_mul(gate_up), weight, bias)
    return _gemv(gate_up.contiguous(), weight, bias, SILU_MUL)
