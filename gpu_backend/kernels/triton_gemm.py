"""``y = x W^T`` for a few rows of x (batched decode), with W dense bf16 or ECF-coded: one Triton GEMM.

Built for the batched-decode targets of compressed weights (docs/weights-format.md, "On a GPU"):
decoding a whole weight into scratch before cuBLAS reads it moves 5.5 bytes a weight where bf16
moves 2, so batch 32 cannot come near bf16 that way. This GEMM decodes each tile of an ECF weight
in registers, as the GEMV does, and feeds the tensor cores the same bf16 values the dense form
would: per K tile of ``8 * G`` columns, and per slice of ``GS`` of its groups, it takes 8 dots of
``GS`` columns each, phase 0 to 7 (phase j of group g is column ``j * G + g`` of the tile,
weights/planes.py), accumulated in that order. The dense
and the coded weight therefore give the same bits, which cuBLAS and a coded weight cannot.

Not used by the layers: for a compressed model to answer as its dense original does at every batch,
the dense one would have to run this GEMM too instead of cuBLAS, and on an H200 it took 1.5-2.4x
cuBLAS's time on bf16 weights (gate_up at 64 rows: 105 us at best against 70), with the coded and
dense outputs unequal at 32 rows (`benchmarks/ecf_gemv_probe.py --gemm` times both against cuBLAS;
results/ecf_gemv_probe_h200_column_sums.json).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gpu_backend.kernels.ecf_decode import INTERPRETED, decode_group, weight_args
from gpu_backend.weights.packed import CompressedWeight
from gpu_backend.weights.planes import GROUP, tile_cols

MIN_PHASE_COLS = 16  # a tensor-core dot takes at least 16 columns: K tiles of 128 and up


@triton.jit
def _dot_phase(acc, x_rows, m_ok, c, K, w, ASM: tl.constexpr):
    """acc + x[:, c] @ w^T, w a [BLOCK_N, G] bf16 phase of W. Triton's interpreter (not ASM) multiplies
    bfloat16 operands wrongly, so there they are widened to float32 first: exactly, the same for both forms."""
    x = tl.load(x_rows + c[None, :], mask=m_ok[:, None] & (c < K)[None, :], other=0.0)
    if ASM:
        return tl.dot(x, tl.trans(w), acc)
    return tl.dot(x.to(tl.float32), tl.trans(w).to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _low(pair):
    return (pair & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _high(pair):
    return (pair >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _gemm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, base_ptr, escapes_ptr, escapes_addr,
                 plane_stride, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr, GS: tl.constexpr,
                 HAS_BIAS: tl.constexpr, ECF: tl.constexpr, ASM: tl.constexpr):
    """A K tile's groups are taken GS at a time (a slice of each phase's G columns), so a coded tile
    fits in registers; the dense form takes the same slices in the same order."""
    rows_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    safe_n = tl.minimum(rows_n, N - 1)  # rows past N load row N-1 and are never stored
    rows_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rows_m < M
    x_rows = x_ptr + rows_m[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + safe_n[:, None].to(tl.int64) * stride_wn
    KT: tl.constexpr = 8 * G
    SLICES: tl.constexpr = G // GS
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ECF:
        base4 = (tl.load(base_ptr + safe_n).to(tl.int32) * 0x01010101)[:, None]
    for step in range(0, tl.cdiv(K, KT) * SLICES):
        t = step // SLICES
        g = (step % SLICES) * GS + tl.arange(0, GS)  # this slice's groups of tile t
        c = t * KT + g  # phase 0's columns; phase j's are c + j * G
        if ECF:
            words = w_rows + (t * G + g)[None, :]
            lo, hi, ix = tl.load(words), tl.load(words + plane_stride), tl.load(words + 2 * plane_stride)
            p02, p13, p46, p57 = decode_group(lo, hi, ix, base4, escapes_ptr, escapes_addr, ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c, K, _low(p02), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + G, K, _low(p13), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + 2 * G, K, _high(p02), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + 3 * G, K, _high(p13), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + 4 * G, K, _low(p46), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + 5 * G, K, _low(p57), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + 6 * G, K, _high(p46), ASM)
            acc = _dot_phase(acc, x_rows, m_ok, c + 7 * G, K, _high(p57), ASM)
        else:
            for j in tl.static_range(8):
                cj = c + j * G
                w = tl.load(w_rows + cj[None, :], mask=(cj < K)[None, :], other=0.0)
                acc = _dot_phase(acc, x_rows, m_ok, cj, K, w, ASM)
    if HAS_BIAS:
        acc += tl.load(b_ptr + safe_n).to(tl.float32)[None, :]
    y = y_ptr + rows_m[:, None].to(tl.int64) * N + rows_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (rows_n < N)[None, :])


def fits(x: torch.Tensor, weight: torch.Tensor | CompressedWeight) -> bool:
    """Whether ``gemm`` takes these: 2-D bf16 rows against a bf16 weight whose K tiles hold phases of
    at least 16 columns."""
    k = weight.shape[1]
    return (x.dim() == 2 and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.shape[1] == k
            and tile_cols(k) // GROUP >= MIN_PHASE_COLS
            and (isinstance(weight, CompressedWeight) or weight.stride(1) == 1))


def gemm(x: torch.Tensor, weight: torch.Tensor | CompressedWeight, bias: torch.Tensor | None = None,
         block_n: int = 32, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """``x W^T + b`` (bf16, [M, N]) in the phase order above; ``fits(x, weight)`` must hold. The tile
    height and launch options may change how the tensor cores are driven: a dense weight and its coded
    form are equal only under the same ones."""
    if not fits(x, weight):
        raise ValueError(f"the phase GEMM takes 2-D bf16 rows and a bf16 weight with K tiles of 128+ columns, "
                         f"not {tuple(x.shape)} {x.dtype} against {tuple(weight.shape)} {weight.dtype}")
    x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    w, stride_wn, ecf_args, ecf = weight_args(weight)
    _gemm_kernel[(triton.cdiv(n, block_n), triton.cdiv(m, block_m))](
        x, w, bias if bias is not None else x, y, m, n, k, x.stride(0), stride_wn, *ecf_args, BLOCK_M=block_m,
        BLOCK_N=block_n, G=tile_cols(k) // GROUP, GS=MIN_PHASE_COLS * 2 if tile_cols(k) >= 256 else MIN_PHASE_COLS,
        HAS_BIAS=bias is not None, ECF=ecf, ASM=not INTERPRETED, num_warps=num_warps,
        num_stages=num_stages)
    return y
