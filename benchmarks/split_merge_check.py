"""Decode attention's split merge on a CUDA GPU: inside the decode kernel (the last program of a
(sequence, kv head) merges) against the separate reduce kernel, at Llama-3.1-8B attention shapes.

Timings are CUDA-graph replays of 32 back-to-back calls (one per layer, as in a decode step) with
the block table as wide as a decode graph's (max_model_len 4,096), so the split count is the
graph's, not the context's. The stress check launches the fused kernel many times and counts
outputs that are not bit-identical to the first (the merge is deterministic; it reads other
programs' partials, so a memory-ordering bug shows up as a mismatch), and reports the largest
difference from the two-kernel path.

    PYTHONPATH=.:sdk:benchmarks python3 benchmarks/split_merge_check.py [--out results/split_merge_check.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from llama_shapes import environment

from gpu_backend.kernels import triton_attention

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16
TABLE_WIDTH = 4096 // PAGE
LAYERS = 32
SCALE = HEAD_DIM ** -0.5


def inputs(batch: int, context: int) -> dict:
    blocks = batch * TABLE_WIDTH
    cache_shape = (blocks, PAGE, NUM_KV_HEADS, HEAD_DIM)
    return {
        "query": torch.randn(batch, NUM_Q_HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda"),
        "k_cache": torch.randn(cache_shape, dtype=torch.bfloat16, device="cuda"),
        "v_cache": torch.randn(cache_shape, dtype=torch.bfloat16, device="cuda"),
        "seq_lens": torch.full((batch,), context, dtype=torch.int32, device="cuda"),
        "block_tables": torch.randperm(blocks, dtype=torch.int32, device="cuda").view(batch, TABLE_WIDTH),
    }


def call(args: dict, out: torch.Tensor) -> torch.Tensor:
    return triton_attention.decode_attention(args["query"], args["k_cache"], args["v_cache"], args["seq_lens"],
                                             args["block_tables"], SCALE, out=out)


def time_us(fused: bool, args: dict, replays: int = 30) -> float:
    triton_attention.FUSED_SPLIT_REDUCE = fused
    out = torch.empty_like(args["query"])
    for _ in range(2):
        call(args, out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAYERS):
            call(args, out)
    graph.replay()
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000 / LAYERS)
    return statistics.median(samples)


def stress(batch: int, context: int, launches: int) -> dict:
    """Fused launches whose output differs from the first fused one; distance to the two-kernel path."""
    args = inputs(batch, context)
    triton_attention.FUSED_SPLIT_REDUCE = False
    two_kernels = call(args, torch.empty_like(args["query"]))
    triton_attention.FUSED_SPLIT_REDUCE = True
    outs = torch.empty((launches, *args["query"].shape), dtype=args["query"].dtype, device="cuda")
    for i in range(launches):
        call(args, outs[i])
    torch.cuda.synchronize()
    return {"launches": launches, "differing_from_first": int((outs != outs[0]).flatten(1).any(dim=1).sum()),
            "max_abs_diff_vs_two_kernels": float((outs[0].float() - two_kernels.float()).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for batch in (1, 8, 64):
        for context in (128, 640, 2048, 4096):
            data = inputs(batch, context)
            row = {"batch": batch, "context": context,
                   "two_kernels_us": time_us(False, data), "fused_us": time_us(True, data)}
            rows.append(row)
            print(f"batch {batch:3} context {context:5}: two kernels {row['two_kernels_us']:6.2f} us, "
                  f"fused {row['fused_us']:6.2f} us per layer", flush=True)
    mismatches = {f"batch {b} context {c}": stress(b, c, 2000) for b, c in ((1, 4096), (1, 640), (4, 4096))}
    print(f"stress: {mismatches}")
    triton_attention.FUSED_SPLIT_REDUCE = True
    record = {"benchmark": "split_merge_check", **environment(),
              "config": {"q_heads": NUM_Q_HEADS, "kv_heads": NUM_KV_HEADS, "head_dim": HEAD_DIM, "page": PAGE,
                         "table_width": TABLE_WIDTH, "dtype": "bfloat16", "calls_per_graph": LAYERS},
              "timings": rows, "stress_mismatches": mismatches}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
