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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from gpu_backend.kernels import pdl, triton_ops
from gpu_backend.kernels.pdl import wait_then_release

_GEMV_DTYPES = (torch.bfloat16, torch.float16)
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
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, res_ptr, norm_w_ptr, new_res_ptr, N, K, stride_wn, eps,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PROLOGUE: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, BLOCK_ROW: tl.constexpr, USE_PDL: tl.constexpr):
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
        w = tl.load(w_rows + c[None, :], mask=row_ok[:, None] & (c < K)[None, :], other=0.0)
        x = _input_chunk(x_ptr, res_ptr, norm_w_ptr, c, K, rstd, dtype, PROLOGUE, HAS_RESIDUAL)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, acc.to(dtype), mask=row_ok)


def _block_n(n: int, k: int) -> int:
    # Tile heights that won the sweep on an H100 at the Llama-8B shapes: many short rows for the
    # LM head, taller tiles for the wide gate_up/qkv projections, 8 otherwise.
    if n >= 65536:
        return 4
    return 16 if n >= 6144 and k <= 4096 else 8


def _gemv_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.dtype in _GEMV_DTYPES
            and weight.dtype == x.dtype and weight.stride(1) == 1)


def _gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, prologue: int = PLAIN,
          residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
          new_residual: torch.Tensor | None = None) -> torch.Tensor:
    n, k = weight.shape
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    block_n = _block_n(n, k)
    use_pdl = pdl.enabled(x)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y,
        residual if residual is not None else x, norm_weight if norm_weight is not None else weight,
        new_residual if new_residual is not None else y, n, k, weight.stride(0), eps,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=1024, PROLOGUE=prologue,
        HAS_RESIDUAL=residual is not None, BLOCK_ROW=triton.next_power_of_2(k) if prologue == RMS_NORM else 1,
        USE_PDL=use_pdl, num_warps=8, **pdl.launch_options(use_pdl),
    )
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if not _gemv_fits(x, weight):
        return F.linear(x, weight, bias)
    return _gemv(x.contiguous(), weight, bias)


def rms_norm_linear(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
    weight: torch.Tensor, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(x + residual)), x + residual); without a residual, (linear(rms_norm(x)), x)."""
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


def silu_and_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """linear(silu(gate) * up) for gate_up = [gate | up]."""
    if not _gemv_fits(gate_up, weight) or gate_up.shape[-1] != 2 * weight.shape[1]:
        return linear(triton_ops.silu_and_mul(gate_up), weight, bias)
    return _gemv(gate_up.contiguous(), weight, bias, SILU_MUL)
