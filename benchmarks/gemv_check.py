"""Batch-1 decode matmuls of the Llama-3.1-8B shape: cuBLAS (F.linear) against a plain Triton GEMV.

Sizes the room left in the decode step: for each weight shape, the GB/s each reaches reading the
bf16 weight once, over a small sweep of Triton tile sizes; checks the Triton result against
F.linear. Each launch is timed alone (launch cost included); gemv_chain.py times the
engine's GEMV the way a decode step runs it.

    python benchmarks/gemv_check.py [--out benchmarks/results/gemv_check.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

from llama_shapes import environment

SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
          "down_proj": (4096, 14336), "lm_head": (128256, 4096)}


@triton.jit
def _gemv(x_ptr, w_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K), other=0.0)
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0)
        acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=rows < N)


def gemv(x: torch.Tensor, w: torch.Tensor, block_n: int, block_k: int, warps: int) -> torch.Tensor:
    n, k = w.shape
    y = torch.empty(n, dtype=x.dtype, device=x.device)
    _gemv[(triton.cdiv(n, block_n),)](x, w, y, n, k, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    for name, (n, k) in SHAPES.items():
        copies = max(2, int(2e9 // (n * k * 2)))  # rotate weights so L2 never holds the one being read
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(k, device="cuda", dtype=torch.bfloat16)
        state = {"i": 0}

        def next_weight() -> torch.Tensor:
            state["i"] = (state["i"] + 1) % copies
            return weights[state["i"]]

        gb = n * k * 2 / 1e9
        cublas_ms = triton.testing.do_bench(lambda: torch.nn.functional.linear(x[None, :], next_weight()))
        best = None
        for block_n in (4, 8, 16, 32):
            for block_k in (256, 512, 1024):
                for warps in (2, 4, 8):
                    ms = triton.testing.do_bench(lambda: gemv(x, next_weight(), block_n, block_k, warps))
                    if best is None or ms < best[0]:
                        best = (ms, block_n, block_k, warps)
        ms, block_n, block_k, warps = best
        error = (gemv(x, weights[0], block_n, block_k, warps).float()
                 - torch.nn.functional.linear(x[None, :], weights[0])[0].float()).abs().max().item()
        results[name] = {"N": n, "K": k, "cublas_us": cublas_ms * 1e3, "cublas_GB_s": gb / cublas_ms * 1e3,
                         "triton_us": ms * 1e3, "triton_GB_s": gb / ms * 1e3, "block_n": block_n, "block_k": block_k,
                         "num_warps": warps, "max_abs_err": error}
        row = results[name]
        print(f"{name:13} cuBLAS {row['cublas_us']:7.1f} us {row['cublas_GB_s']:6.0f} GB/s   Triton {row['triton_us']:7.1f} "
              f"us {row['triton_GB_s']:6.0f} GB/s  (BN {block_n}, BK {block_k}, warps {warps}; err {error:.3g})", flush=True)
        del weights
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "gemv_check", **environment(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
