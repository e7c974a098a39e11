"""The batch-1 decode matmuls of the Llama-3.1-8B shape as they run in a step: one CUDA graph of
32 layers x (qkv, o, gate_up, down) plus the LM head, each GEMV reading the previous one's output.

Unlike gemv_check.py (one launch at a time, launch cost included), this times the chain the way
the decode graph runs it, so the gaps between kernels and programmatic dependent launch (PDL)
show. Variants of the Triton GEMV: the loop as written in gpu_backend (first weight tile loaded
before the PDL wait, then the plain loop), a loop-carried prefetch of the next tile, tile sizes,
with and without PDL; cuBLAS (F.linear) for reference. Every variant's output is checked against
the first one.

    python benchmarks/gemv_chain.py [--out benchmarks/results/gemv_chain.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from llama_shapes import environment

from gpu_backend.kernels import triton_linear
from gpu_backend.kernels.pdl import wait_then_release

LAYERS = 32
HIDDEN, INTER, QKV, VOCAB = 4096, 14336, 6144, 128256


@triton.jit
def _gemv_variant(x_ptr, w_ptr, y_ptr, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  CARRIED: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows[:, None] * stride_wn
    w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    if USE_PDL:
        wait_then_release()
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if CARRIED:
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + k0 + cols, mask=k0 + cols < K, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
            following = k0 + BLOCK_K + cols
            w = tl.load(w_rows + following[None, :], mask=row_ok[:, None] & (following < K)[None, :], other=0.0)
    else:
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0)
        acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            c = k0 + cols
            w = tl.load(w_rows + c[None, :], mask=row_ok[:, None] & (c < K)[None, :], other=0.0)
            x = tl.load(x_ptr + c, mask=c < K, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=row_ok)


def variant(carried: bool, pdl: bool, block_k: int = 1024, warps: int = 8, block_n=None):
    def run(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, k = w.shape
        bn = block_n(n, k) if block_n else triton_linear._block_n(n, k)
        y = torch.empty((1, n), dtype=x.dtype, device=x.device)
        _gemv_variant[(triton.cdiv(n, bn),)](x, w, y, n, k, w.stride(0), BLOCK_N=bn, BLOCK_K=block_k,
                                             CARRIED=carried, USE_PDL=pdl, num_warps=warps,
                                             **({"launch_pdl": True} if pdl else {}))
        return y
    return run


VARIANTS = {
    "production": triton_linear.linear,
    "peeled+pdl": variant(False, True),
    "peeled": variant(False, False),
    "carried+pdl": variant(True, True),
    "carried": variant(True, False),
    "peeled+pdl bk512": variant(False, True, block_k=512),
    "peeled+pdl w4": variant(False, True, warps=4),
    "peeled+pdl bn8": variant(False, True, block_n=lambda n, k: 4 if n >= 65536 else 8),
    "peeled+pdl bn16": variant(False, True, block_n=lambda n, k: 4 if n >= 65536 else 16),
    "cublas": lambda x, w: F.linear(x, w),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--replays", type=int, default=30)
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)

    def weight(n: int, k: int) -> torch.Tensor:
        return (torch.rand(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) - 0.5) * (3.4 / k**0.5)

    layers = [(weight(QKV, HIDDEN), weight(HIDDEN, HIDDEN), weight(2 * INTER, HIDDEN), weight(HIDDEN, INTER))
              for _ in range(LAYERS)]
    lm_head = weight(VOCAB, HIDDEN)
    total_bytes = sum(w.numel() * 2 for layer in layers for w in layer) + lm_head.numel() * 2
    x0 = torch.randn(1, HIDDEN, device="cuda", dtype=torch.bfloat16)

    def chain(gemv) -> torch.Tensor:
        x = x0
        for qkv, o, gate_up, down in layers:
            x = gemv(x, qkv)[:, :HIDDEN]
            x = gemv(x, o)
            x = gemv(x, gate_up)[:, :INTER]
            x = gemv(x, down)
        return gemv(x, lm_head)

    results, reference = {}, None
    for name, gemv in VARIANTS.items():
        out = chain(gemv)  # compile
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain(gemv)
        graph.replay()
        torch.cuda.synchronize()
        if reference is None:
            reference = out.float().clone()
        error = ((out.float() - reference).norm() / reference.norm()).item()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(args.replays):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        ms = sorted(times)[len(times) // 2]
        results[name] = {"ms_per_chain": ms, "GB_s": total_bytes / ms / 1e6, "rel_error_vs_first": error}
        print(f"{name:18} {ms:7.3f} ms  {total_bytes / ms / 1e6:6.0f} GB/s  rel err vs first {error:.2e}", flush=True)
        del graph
    print(f"{total_bytes / 1e9:.2f} GB of weights per chain")
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "gemv_chain", **environment(),
                                        "weight_bytes": total_bytes, "results": results}, indent=2))


if __name__ == "__main__":
    main()
