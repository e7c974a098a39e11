"""``y = x W^T + b`` for one row of x (batch-1 decode): a Triton GEMV, else torch's matmul.

At one row a linear layer only streams its weight. Each program reduces BLOCK_N rows of W over the
whole of K, so no split-K pass or second launch is needed. Launched with PDL (pdl.py), each
program's first weight tile is already loading while the kernel before it finishes.

Two dense forms (``DENSE_GEMV``), both measured on an H100 in the engine's batch-1 Llama-3.1-8B decode
(benchmarks/results/compressed_decode_settings_h100.json):
- ``"phases"`` (`_gemv_kernel`, the default: 180.4 tok/s) lays its sums down so that none depends on
  how the compiler lays a tile out in registers: each output element keeps a K tile's width of running
  sums (one per column, in 8 phases of G columns), advanced by one fused multiply-add per tile, then
  summed by halving (`_row_sums`); K tiles narrower than 1,024 columns are taken several a step
  (`ecf_decode.tiles_a_step`), each step's columns one running sum. So a kernel that gets the same
  weights another way, the ECF GEMV below, gets the same output, and a compressed model answers as its
  dense original does. Its input's norm or SiLU comes from the separate kernel (triton_ops), rounded as
  everywhere else.
- ``"tiles"`` (`_tile_gemv_kernel`: 182.6 tok/s, 1.2% faster) sums each tile's products across the
  tile, and can compute its input itself, which saves a launch per fused op (docs/engine.md,
  "Kernels"): `rms_norm_linear`, the (residual add and) RMS norm before qkv and gate_up (every program
  recomputes the row's norm from the row, a few KB from L2; program 0 writes the new residual), and
  `silu_and_mul_linear`, silu(gate) * up before down_proj. Both round exactly where their separate
  kernels do. Its sums are not the ECF GEMV's.

A weight may also be an ECF ``CompressedWeight`` (docs/weights-format.md; gpu_backend/weights/packed.py
and planes.py), which stays coded in GPU memory: 1.5 bytes per weight instead of 2. At one row the
same GEMV kernel as "phases" (the ``ECF`` constexpr) loads each tile's three plane words a group of 8
weights, decodes four weights at a time in byte lanes (``_ecf_pairs``), swaps in an escaped group's
entry, and adds the products into the same sums: bit for bit the "phases" output on the decoded weight
(204.7 tok/s on that H100, 1.12x "tiles"). Several rows decode the whole weight into the model's
scratch buffer (`decode_to_scratch`) and run what a bf16 weight runs on it, exact by construction;
`FUSED_ECF_DECODE = False` does so at one row too. Under ``BATCH_GEMM = "phases"`` rows 2..64 instead run
triton_gemm's GEMM on both forms, the ECF one decoding in registers as the GEMV does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from gpu_backend.kernels import pdl, triton_gemm, triton_ops
from gpu_backend.kernels.ecf_decode import (
    INTERPRETED,
    decode_group,
    decode_to_scratch,
    load_tile,
    phase0_cols,
    tiles_a_step,
    weight_args,
)
from gpu_backend.kernels.pdl import wait_then_release
from gpu_backend.weights.packed import CompressedWeight, Weight
from gpu_backend.weights.planes import GROUP, tile_cols

_GEMV_DTYPES = (torch.bfloat16, torch.float16)
# False: a compressed weight at one row is decoded into its scratch buffer and the bf16 GEMV runs on
# that (exact by construction, but the weight is written and read dense once more)
FUSED_ECF_DECODE = True
# The dense GEMV (module docstring): "phases" sums as the ECF GEMV does, so a compressed model's output is
# its dense original's; "tiles" ran batch-1 decode 1.2% faster on an H100 and fuses the norm and SiLU.
DENSE_GEMV = "phases"
# Whether the GEMV loads each weight tile one loop step ahead of its sums (register double-buffering: more
# bytes in flight a thread, for more registers); None: where it was measured faster (_phase_settings). The
# sums are the same either way.
GEMV_PREFETCH: bool | None = None
# The phase-sum GEMV's rows a program and loading ahead at a weight shape, (n, k, ecf) -> (block_n, prefetch),
# where a sweep on the card found them faster than _phase_settings' (benchmarks/ecf_gemv_probe.py
# --block-n writes one, compressed_decode.py --gemv-tuning loads it). Each row's sums, so its bits, are the
# same under any entry.
PHASE_GEMV_TUNING: dict[tuple[int, int, bool], tuple[int, bool]] = {}
# Several rows up to triton_gemm.MAX_ROWS (batched decode): "cublas" runs torch's matmul, on a compressed weight
# after decoding it into scratch; "phases" runs triton_gemm's GEMM on both forms, which sums alike, so a
# compressed model answers as its dense original does without writing and reading the weight dense again.
BATCH_GEMM = "cublas"
PLAIN, RMS_NORM, SILU_MUL = 0, 1, 2  # what the GEMV does to its input first


@triton.jit
def _load(ptr, ok, EVEN_K: tl.constexpr):
    """Zeros where not ``ok``; EVEN_K: every column is inside K, so no mask at all."""
    if EVEN_K:
        return tl.load(ptr)
    return tl.load(ptr, mask=ok, other=0.0)


@triton.jit
def _input_chunk(x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype: tl.constexpr,
                 PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, EVEN_K: tl.constexpr):
    """Columns c of the GEMV's input, in fp32, rounded as the separate kernels round them (zeros
    past K)."""
    ok = c < K
    if PROLOGUE == 1:
        s = _load(x_ptr + c, ok, EVEN_K)
        if HAS_RESIDUAL:
            s = (s.to(tl.float32) + _load(res_ptr + c, ok, EVEN_K).to(tl.float32)).to(dtype)
        normed = (s.to(tl.float32) * rstd).to(dtype)
        w = _load(norm_w_ptr + c, ok, EVEN_K)
        return (normed.to(tl.float32) * w.to(tl.float32)).to(dtype).to(tl.float32)
    elif PROLOGUE == 2:
        gate = _load(x_ptr + c, ok, EVEN_K).to(tl.float32)
        up = _load(x_ptr + K + c, ok, EVEN_K).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        return (silu * up).to(dtype).to(tl.float32)
    else:
        return _load(x_ptr + c, ok, EVEN_K).to(tl.float32)


@triton.jit
def _fma_phase(acc, w, x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype: tl.constexpr,
               PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, EVEN_K: tl.constexpr):
    """acc + w * x[c], one rounding per element: the same sum whatever the registers' layout."""
    x = _input_chunk(x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, EVEN_K)
    return tl.fma(w, x[None, :], acc)


@triton.jit
def _fma_pair(first, second, pair, c, K, x_ptr, res_ptr, norm_w_ptr, rstd, dtype: tl.constexpr,
              PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, EVEN_K: tl.constexpr, SECOND: tl.constexpr):
    """Two phases' running sums advanced by a word of bf16 pairs: the low halves are columns c, the
    high halves columns c + SECOND."""
    low = (pair << 16).to(tl.float32, bitcast=True)
    high = (pair & -65536).to(tl.float32, bitcast=True)
    first = _fma_phase(first, low, x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, EVEN_K)
    second = _fma_phase(second, high, x_ptr, res_ptr, norm_w_ptr, c + SECOND, K, rstd, dtype, PROLOGUE,
                        HAS_RESIDUAL, EVEN_K)
    return first, second


@triton.jit
def _ecf_fma(a0, a1, a2, a3, a4, a5, a6, a7, lo, hi, ix, base4, escapes_ptr, escapes_addr, x_ptr, res_ptr,
             norm_w_ptr, c0, K, rstd, dtype: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
             G: tl.constexpr, EVEN_K: tl.constexpr, ASM: tl.constexpr, TILES: tl.constexpr):
    """The 8 phases' running sums advanced by one decoded step of TILES K tiles from column c0: phase j's
    are columns j*G.. of each tile."""
    p02, p13, p46, p57 = decode_group(lo, hi, ix, base4, escapes_ptr, escapes_addr, ASM)
    c = c0 + phase0_cols(G, TILES)
    a0, a2 = _fma_pair(a0, a2, p02, c, K, x_ptr, res_ptr, norm_w_ptr, rstd, dtype, PROLOGUE, HAS_RESIDUAL, EVEN_K,
                       2 * G)
    a1, a3 = _fma_pair(a1, a3, p13, c + G, K, x_ptr, res_ptr, norm_w_ptr, rstd, dtype, PROLOGUE, HAS_RESIDUAL,
                       EVEN_K, 2 * G)
    a4, a6 = _fma_pair(a4, a6, p46, c + 4 * G, K, x_ptr, res_ptr, norm_w_ptr, rstd, dtype, PROLOGUE, HAS_RESIDUAL,
                       EVEN_K, 2 * G)
    a5, a7 = _fma_pair(a5, a7, p57, c + 5 * G, K, x_ptr, res_ptr, norm_w_ptr, rstd, dtype, PROLOGUE, HAS_RESIDUAL,
                       EVEN_K, 2 * G)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _tile_gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, res_ptr, norm_w_ptr, new_res_ptr, N, K, stride_wn, eps,
                      HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PROLOGUE: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, BLOCK_ROW: tl.constexpr, USE_PDL: tl.constexpr):
    """y = x W^T for one row x and a dense W (DENSE_GEMV "tiles"): each [BLOCK_N, BLOCK_K] tile's
    products are summed across the tile, then added to the row's sum."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows[:, None] * stride_wn
    dtype = y_ptr.dtype.element_ty
    # The weights depend on no earlier kernel: the first tile is in flight before the wait.
    w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    if USE_PDL:
        wait_then_release()
    rstd = 0.0
    if PROLOGUE == 1:
        rstd = _rstd(x_ptr, res_ptr, new_res_ptr, K, eps, dtype, HAS_RESIDUAL, BLOCK_ROW)
    x = _input_chunk(x_ptr, res_ptr, norm_w_ptr, cols, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, False)
    acc = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        c = k0 + cols
        w = tl.load(w_rows + c[None, :], mask=row_ok[:, None] & (c < K)[None, :], other=0.0)
        x = _input_chunk(x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, False)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, acc.to(dtype), mask=row_ok)


@triton.jit
def _rstd(x_ptr, res_ptr, new_res_ptr, K, eps, dtype: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
          BLOCK_ROW: tl.constexpr):
    """1 / RMS of the row (plus the residual, which program 0 writes back), summed as _rms_norm_kernel sums it."""
    everything = tl.arange(0, BLOCK_ROW)
    s = tl.load(x_ptr + everything, mask=everything < K, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + everything, mask=everything < K, other=0.0)
        s = (s.to(tl.float32) + r.to(tl.float32)).to(dtype)
        if tl.program_id(0) == 0:
            tl.store(new_res_ptr + everything, s, mask=everything < K)
    s32 = s.to(tl.float32)
    return 1.0 / tl.sqrt(tl.sum(s32 * s32, axis=0) / K + eps)


@triton.jit
def _dense_tile(w_rows, c0, K, G: tl.constexpr, EVEN_K: tl.constexpr, TILES: tl.constexpr):
    """A bf16 step of TILES K tiles from column c0 as the ECF form has it: 8 phases, phase j each tile's
    columns j*G..."""
    c = c0 + phase0_cols(G, TILES)
    return (_load(w_rows + c[None, :], (c < K)[None, :], EVEN_K),
            _load(w_rows + (c + G)[None, :], (c + G < K)[None, :], EVEN_K),
            _load(w_rows + (c + 2 * G)[None, :], (c + 2 * G < K)[None, :], EVEN_K),
            _load(w_rows + (c + 3 * G)[None, :], (c + 3 * G < K)[None, :], EVEN_K),
            _load(w_rows + (c + 4 * G)[None, :], (c + 4 * G < K)[None, :], EVEN_K),
            _load(w_rows + (c + 5 * G)[None, :], (c + 5 * G < K)[None, :], EVEN_K),
            _load(w_rows + (c + 6 * G)[None, :], (c + 6 * G < K)[None, :], EVEN_K),
            _load(w_rows + (c + 7 * G)[None, :], (c + 7 * G < K)[None, :], EVEN_K))


@triton.jit
def _dense_fma(a0, a1, a2, a3, a4, a5, a6, a7, w0, w1, w2, w3, w4, w5, w6, w7, x_ptr, res_ptr, norm_w_ptr, c0, K,
               rstd, dtype: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, G: tl.constexpr,
               EVEN_K: tl.constexpr, TILES: tl.constexpr):
    """The 8 phases' running sums advanced by one bf16 step (_dense_tile), as _ecf_fma advances them."""
    c = c0 + phase0_cols(G, TILES)
    a0 = _fma_phase(a0, w0.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL,
                    EVEN_K)
    a1 = _fma_phase(a1, w1.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + G, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL,
                    EVEN_K)
    a2 = _fma_phase(a2, w2.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + 2 * G, K, rstd, dtype, PROLOGUE,
                    HAS_RESIDUAL, EVEN_K)
    a3 = _fma_phase(a3, w3.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + 3 * G, K, rstd, dtype, PROLOGUE,
                    HAS_RESIDUAL, EVEN_K)
    a4 = _fma_phase(a4, w4.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + 4 * G, K, rstd, dtype, PROLOGUE,
                    HAS_RESIDUAL, EVEN_K)
    a5 = _fma_phase(a5, w5.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + 5 * G, K, rstd, dtype, PROLOGUE,
                    HAS_RESIDUAL, EVEN_K)
    a6 = _fma_phase(a6, w6.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + 6 * G, K, rstd, dtype, PROLOGUE,
                    HAS_RESIDUAL, EVEN_K)
    a7 = _fma_phase(a7, w7.to(tl.float32), x_ptr, res_ptr, norm_w_ptr, c + 7 * G, K, rstd, dtype, PROLOGUE,
                    HAS_RESIDUAL, EVEN_K)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _halve(acc, BLOCK_N: tl.constexpr, WIDTH: tl.constexpr):
    return tl.sum(tl.reshape(acc, [BLOCK_N, 2, WIDTH // 2]), axis=1)


@triton.jit
def _row_sums(acc, BLOCK_N: tl.constexpr, G: tl.constexpr):
    """Each row of acc [BLOCK_N, G] summed by halving (column i + column i + width/2, width G down
    to 2): two-element sums only, so the same additions whatever the registers' layout."""
    for i in tl.static_range(11):  # widths G, G/2, ..., 2 (G is at most 1024)
        if (G >> i) >= 2:
            acc = _halve(acc, BLOCK_N, G >> i)
    return tl.reshape(acc, [BLOCK_N])


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, res_ptr, norm_w_ptr, new_res_ptr, N, K, stride_wn, eps,
                 base_ptr, escapes_ptr, escapes_addr, plane_stride,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr, PROLOGUE: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, BLOCK_ROW: tl.constexpr, USE_PDL: tl.constexpr, ECF: tl.constexpr,
                 EVEN_K: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr, TILES: tl.constexpr):
    """y = x W^T for one row x, in steps of TILES K tiles of 8*G columns (so KT = 8*TILES*G columns a step,
    TILES*G groups). Every output element keeps KT running
    sums, one per column of a step, each advanced by one fma per step in step order; they are then
    summed by halving (_row_sums). No sum depends on how the compiler lays a tile out in registers,
    so the ECF form (w_ptr the weight's planes, weights/planes.py, each tile decoded in registers as
    8 phases of G columns) gives bit for bit what the bf16 kernel gives on the decoded weight."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    safe_rows = tl.minimum(rows, N - 1)  # rows past N load row N-1 and are never stored
    w_rows = w_ptr + safe_rows[:, None].to(tl.int64) * stride_wn
    dtype = y_ptr.dtype.element_ty
    W: tl.constexpr = TILES * G  # groups a step
    KT: tl.constexpr = 8 * W
    num_tiles = tl.cdiv(K, KT)  # steps (`ecf_decode.tiles_a_step` picks TILES so that each is whole)
    # The weights depend on no earlier kernel: the first tile is in flight before the wait.
    if ECF:
        base4 = (tl.load(base_ptr + safe_rows).to(tl.int32) * 0x01010101)[:, None]  # the window's base, a byte each
        lo, hi, ix = load_tile(w_rows, plane_stride, 0, W)
    else:
        w0, w1, w2, w3, w4, w5, w6, w7 = _dense_tile(w_rows, 0, K, G, EVEN_K, TILES)
    if USE_PDL:
        wait_then_release()
    rstd = 0.0
    if PROLOGUE == 1:
        rstd = _rstd(x_ptr, res_ptr, new_res_ptr, K, eps, dtype, HAS_RESIDUAL, BLOCK_ROW)
    if ECF:
        a0 = tl.zeros([BLOCK_N, W], dtype=tl.float32)
        a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
        if PREFETCH:  # tile t's words are loading while tile t - 1 is decoded and summed
            for t in range(1, num_tiles):
                next_lo, next_hi, next_ix = load_tile(w_rows, plane_stride, t, W)
                a0, a1, a2, a3, a4, a5, a6, a7 = _ecf_fma(a0, a1, a2, a3, a4, a5, a6, a7, lo, hi, ix, base4,
                                                          escapes_ptr, escapes_addr, x_ptr, res_ptr, norm_w_ptr,
                                                          (t - 1) * KT, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, G,
                                                          EVEN_K, ASM, TILES)
                lo, hi, ix = next_lo, next_hi, next_ix
            a0, a1, a2, a3, a4, a5, a6, a7 = _ecf_fma(a0, a1, a2, a3, a4, a5, a6, a7, lo, hi, ix, base4, escapes_ptr,
                                                      escapes_addr, x_ptr, res_ptr, norm_w_ptr, (num_tiles - 1) * KT,
                                                      K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, G, EVEN_K, ASM, TILES)
        else:
            a0, a1, a2, a3, a4, a5, a6, a7 = _ecf_fma(a0, a1, a2, a3, a4, a5, a6, a7, lo, hi, ix, base4, escapes_ptr,
                                                      escapes_addr, x_ptr, res_ptr, norm_w_ptr, 0, K, rstd, dtype,
                                                      PROLOGUE, HAS_RESIDUAL, G, EVEN_K, ASM, TILES)
            for t in range(1, num_tiles):
                lo, hi, ix = load_tile(w_rows, plane_stride, t, W)
                a0, a1, a2, a3, a4, a5, a6, a7 = _ecf_fma(a0, a1, a2, a3, a4, a5, a6, a7, lo, hi, ix, base4,
                                                          escapes_ptr, escapes_addr, x_ptr, res_ptr, norm_w_ptr,
                                                          t * KT, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL, G, EVEN_K,
                                                          ASM, TILES)
    else:
        a0 = tl.zeros([BLOCK_N, W], dtype=tl.float32)
        a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
        if PREFETCH:
            for t in range(1, num_tiles):
                n0, n1, n2, n3, n4, n5, n6, n7 = _dense_tile(w_rows, t * KT, K, G, EVEN_K, TILES)
                a0, a1, a2, a3, a4, a5, a6, a7 = _dense_fma(a0, a1, a2, a3, a4, a5, a6, a7, w0, w1, w2, w3, w4, w5,
                                                            w6, w7, x_ptr, res_ptr, norm_w_ptr, (t - 1) * KT, K, rstd,
                                                            dtype, PROLOGUE, HAS_RESIDUAL, G, EVEN_K, TILES)
                w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
            a0, a1, a2, a3, a4, a5, a6, a7 = _dense_fma(a0, a1, a2, a3, a4, a5, a6, a7, w0, w1, w2, w3, w4, w5, w6,
                                                        w7, x_ptr, res_ptr, norm_w_ptr, (num_tiles - 1) * KT, K, rstd,
                                                        dtype, PROLOGUE, HAS_RESIDUAL, G, EVEN_K, TILES)
        else:
            a0, a1, a2, a3, a4, a5, a6, a7 = _dense_fma(a0, a1, a2, a3, a4, a5, a6, a7, w0, w1, w2, w3, w4, w5, w6,
                                                        w7, x_ptr, res_ptr, norm_w_ptr, 0, K, rstd, dtype, PROLOGUE,
                                                        HAS_RESIDUAL, G, EVEN_K, TILES)
            for t in range(1, num_tiles):
                w0, w1, w2, w3, w4, w5, w6, w7 = _dense_tile(w_rows, t * KT, K, G, EVEN_K, TILES)
                a0, a1, a2, a3, a4, a5, a6, a7 = _dense_fma(a0, a1, a2, a3, a4, a5, a6, a7, w0, w1, w2, w3, w4, w5,
                                                            w6, w7, x_ptr, res_ptr, norm_w_ptr, t * KT, K, rstd, dtype,
                                                            PROLOGUE, HAS_RESIDUAL, G, EVEN_K, TILES)
    # the 8 phases' sums, then each row's W by halving: the same additions for both forms
    out = _row_sums(((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), BLOCK_N, W)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, out.to(dtype), mask=row_ok)


def _block_n(n: int, k: int) -> int:
    # Tile heights that won the sweep on an H100 at the Llama-8B shapes: many short rows for the
    # LM head, taller tiles for the wide gate_up/qkv projections, 8 otherwise.
    if n >= 65536:
        return 4
    return 16 if n >= 6144 and k <= 4096 else 8


# The phase-sum GEMV's (rows a program, loading ahead) by weight shape, ECF and bf16 "phases": the fastest of
# the sweep on an H100 at the Llama-3.1-8B shapes (ecf_gemv_probe.py --block-n,
# benchmarks/results/ecf_gemv_probe_block_n_h100.json; µs, ECF / phases). Long rows, K > 8192 (down_proj):
# 48.8 / 52.6. An LM head, N >= 65536: 272.3 / 341.7. Wide, N >= 16384 (gate_up): 77.0 / 88.8. Between
# (qkv): 27.4 / 28.9. Square and smaller (o_proj): 24.8 / 21.7. With these the engine's batch-1 decode ran
# 204.7 tok/s on ECF weights and 180.4 on bf16 "phases", against 182.6 on bf16 "tiles"
# (compressed_decode_settings_h100.json).
_PHASE_SETTINGS = {  # shape class: ((ECF block_n, prefetch), (phases block_n, prefetch))
    "long rows": ((16, True), (16, False)),
    "lm head": ((8, False), (8, False)),
    "wide": ((4, True), (16, False)),
    "between": ((8, False), (8, True)),
    "square": ((2, False), (8, False)),
}


def _phase_settings(n: int, k: int, ecf: bool) -> tuple[int, bool]:
    shape = ("long rows" if k > 8192 else "lm head" if n >= 65536 else "wide" if n >= 16384
             else "between" if n > k else "square")
    return _PHASE_SETTINGS[shape][0 if ecf else 1]


def _gemv_fits(x: torch.Tensor, weight: Weight) -> bool:
    if isinstance(weight, CompressedWeight):  # the ECF decode in the GEMV makes bfloat16 only
        return (FUSED_ECF_DECODE and x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.dtype == torch.bfloat16
                and weight.dtype == torch.bfloat16)
    return (x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.dtype in _GEMV_DTYPES
            and weight.dtype == x.dtype and weight.stride(1) == 1)


def _gemv(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None, prologue: int = PLAIN,
          residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
          new_residual: torch.Tensor | None = None, block_n: int | None = None) -> torch.Tensor:
    """The GEMV; ``block_n``: rows a program, else PHASE_GEMV_TUNING's or _phase_settings' ("tiles":
    _block_n's). Each row's sums are the same whichever."""
    n, k = weight.shape
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    use_pdl = pdl.enabled(x)
    w, stride_wn, ecf_args, ecf = weight_args(weight)
    if not ecf and DENSE_GEMV == "tiles":
        block_n = block_n or _block_n(n, k)
        _tile_gemv_kernel[(triton.cdiv(n, block_n),)](
            x, w, bias if bias is not None else x, y,
            residual if residual is not None else x, norm_weight if norm_weight is not None else x,
            new_residual if new_residual is not None else y, n, k, stride_wn, eps,
            HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=1024, PROLOGUE=prologue,
            HAS_RESIDUAL=residual is not None, BLOCK_ROW=triton.next_power_of_2(k) if prologue == RMS_NORM else 1,
            USE_PDL=use_pdl, num_warps=8, **pdl.launch_options(use_pdl),
        )
        return y
    tuned_block_n, tuned_prefetch = PHASE_GEMV_TUNING.get((n, k, ecf)) or _phase_settings(n, k, ecf)
    block_n = block_n or tuned_block_n
    prefetch = GEMV_PREFETCH if GEMV_PREFETCH is not None else tuned_prefetch
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, bias if bias is not None else x, y,
        residual if residual is not None else x, norm_weight if norm_weight is not None else x,
        new_residual if new_residual is not None else y, n, k, stride_wn, eps, *ecf_args,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, G=tile_cols(k) // GROUP, PROLOGUE=prologue,
        HAS_RESIDUAL=residual is not None, BLOCK_ROW=triton.next_power_of_2(k) if prologue == RMS_NORM else 1,
        USE_PDL=use_pdl, num_warps=8, ECF=ecf, EVEN_K=k % tile_cols(k) == 0, ASM=not INTERPRETED,
        PREFETCH=prefetch, TILES=tiles_a_step(k),
        **pdl.launch_options(use_pdl),
    )
    return y


def _gemm_fits(x: torch.Tensor, weight: Weight) -> bool:
    return (BATCH_GEMM == "phases" and x.is_cuda and x.dim() == 2 and 2 <= x.shape[0] <= triton_gemm.MAX_ROWS
            and triton_gemm.fits(x, weight))


def _decoded_unless_fused(x: torch.Tensor, weight: Weight) -> Weight:
    """A compressed weight the ECF GEMV will not take, decoded into scratch: then every path runs as
    it does on a bf16 weight (the bf16 GEMV at one row, torch's matmul for several)."""
    if isinstance(weight, CompressedWeight) and not _gemv_fits(x, weight):
        return decode_to_scratch(weight)
    return weight


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` dense, or compressed (ECF): decoded inside the GEMV for one row (and inside the GEMM
    for a few, under BATCH_GEMM "phases"), else into scratch."""
    if _gemm_fits(x, weight):
        return triton_gemm.gemm(x, weight, bias)
    weight = _decoded_unless_fused(x, weight)
    if not _gemv_fits(x, weight):
        return F.linear(x, weight, bias)
    return _gemv(x.contiguous(), weight, bias)


def _fuses_prologue(weight: Weight) -> bool:
    """Whether the GEMV computes its input's norm or SiLU itself: only the "tiles" form. The phase-sum
    form (ECF, and bf16 under "phases") takes the separate kernel first, which rounds alike: in its fused
    prologue each row thread of a tile recomputes the input, which made the ECF loop 40% longer with the
    norm and twice as long with the SiLU (904 SASS instructions against 445), and engine decode on
    "phases" 0.56x as fast (benchmarks/results/compressed_decode_h100.json). In CUDA graphs the separate
    kernels were also the faster route for the ECF GEMV (ecf_gemv_probe_block_n_h100.json, "prologue_sweep")."""
    return DENSE_GEMV == "tiles" and not isinstance(weight, CompressedWeight)


def rms_norm_linear(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
    weight: Weight, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(x + residual)), x + residual); without a residual, (linear(rms_norm(x)), x)."""
    fits = (_gemv_fits(x, weight) and norm_weight.dtype == x.dtype and x.shape[-1] <= 16384
            and (residual is None or residual.dtype == x.dtype) and _fuses_prologue(weight))
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
    if not _gemv_fits(gate_up, weight) or gate_up.shape[-1] != 2 * weight.shape[1] or not _fuses_prologue(weight):
        return linear(triton_ops.silu_and_mul(gate_up), weight, bias)
    return _gemv(gate_up.contiguous(), weight, bias, SILU_MUL)
