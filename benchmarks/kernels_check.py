"""The Triton kernels on a CUDA GPU: correctness against their torch twins at Llama-3.1-8B sizes
(bf16 and fp16), then the speed of the attention kernels next to SDPA on contiguous K/V.

Decode is the bandwidth-bound hot path, reported as GB/s of K/V read; prefill and mixed batches
are compute-bound, reported as TFLOP/s of causal attention (QK^T and PV, 4 flops per
query-key-dim). Every timing is a CUDA-graph replay (as the engine runs decode), with rotating
input sets where one set would sit in L2. Prints tables; writes JSON only with --out.

    PYTHONPATH=.:sdk python3 benchmarks/kernels_check.py [--out benchmarks/results/kernels_check.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton
from rich.console import Console
from rich.table import Table
from torch.nn.attention.bias import causal_lower_right

from gpu_backend.kernels import get_kernels, reference

# Llama-3.1-8B
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128
HIDDEN_SIZE, INTERMEDIATE_SIZE, BLOCK_SIZE = 4096, 14336, 16
ROPE_THETA, RMS_EPS = 500000.0, 1e-5
SCALE = HEAD_DIM**-0.5
DECODE_BATCHES = (1, 8, 64, 256)
DECODE_CONTEXTS = (128, 512, 2048, 8192)
L2_FLUSH_BYTES = 256 << 20  # several times the H100's 50 MB L2
TOLERANCE = {torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}  # (atol, rtol)

console = Console()
triton_kernels = get_kernels("triton")


class PagedInputs:
    """Sequences laid out in a paged cache over shuffled blocks, `num_sets` disjoint copies (block tables)."""

    def __init__(
        self, q_lens: Sequence[int], seq_lens: Sequence[int], dtype: torch.dtype, num_sets: int = 1
    ) -> None:
        blocks_per_seq = [math.ceil(n / BLOCK_SIZE) for n in seq_lens]
        width, per_set = max(blocks_per_seq), sum(blocks_per_seq)
        shape = (per_set * num_sets, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        self.k_cache = torch.randn(shape, dtype=dtype, device="cuda")
        self.v_cache = torch.randn(shape, dtype=dtype, device="cuda")
        ids = torch.randperm(shape[0], device="cuda", dtype=torch.int32).split(per_set)
        self.block_tables = []
        for set_ids in ids:
            table = torch.zeros(len(seq_lens), width, dtype=torch.int32, device="cuda")
            for i, row in enumerate(set_ids.split(blocks_per_seq)):
                table[i, : len(row)] = row
            self.block_tables.append(table)
        self.query = torch.randn(sum(q_lens), NUM_Q_HEADS, HEAD_DIM, dtype=dtype, device="cuda")
        starts = [0] + list(torch.tensor(list(q_lens)).cumsum(0).tolist())
        self.query_start_loc = torch.tensor(starts, dtype=torch.int32, device="cuda")
        self.seq_lens = torch.tensor(list(seq_lens), dtype=torch.int32, device="cuda")
        self.q_lens, self.lens = list(q_lens), list(seq_lens)

    def paged(self, kernels: Any, table: int = 0) -> torch.Tensor:
        return kernels.paged_attention(
            self.query,
            self.k_cache,
            self.v_cache,
            self.query_start_loc,
            self.seq_lens,
            self.block_tables[table],
            max(self.q_lens),
            max(self.lens),
            SCALE,
        )

    def decode(self, kernels: Any, table: int = 0) -> torch.Tensor:
        return kernels.decode_attention(
            self.query, self.k_cache, self.v_cache, self.seq_lens, self.block_tables[table], SCALE
        )

    def contiguous_kv(self, i: int, table: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence i's K and V as [1, Hkv, seq_len, D], for SDPA."""
        blocks = self.block_tables[table][i, : math.ceil(self.lens[i] / BLOCK_SIZE)].long()

        def gather(cache: torch.Tensor) -> torch.Tensor:
            return cache[blocks].flatten(0, 1)[: self.lens[i]].transpose(0, 1).unsqueeze(0).contiguous()

        return gather(self.k_cache), gather(self.v_cache)

    def kv_bytes(self) -> int:
        return 2 * sum(self.lens) * NUM_KV_HEADS * HEAD_DIM * self.k_cache.element_size()

    def flops(self) -> int:
        """Causal attention flops: each query sees (its position + 1) keys."""
        seen = sum(q * (n - q) + q * (q + 1) // 2 for q, n in zip(self.q_lens, self.lens))
        return 4 * seen * NUM_Q_HEADS * HEAD_DIM


def max_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> tuple[float, bool]:
    atol, rtol = TOLERANCE[dtype]
    diff = (actual.float() - expected.float()).abs()
    ok = bool(torch.all(diff <= atol + rtol * expected.float().abs())) and not actual.isnan().any()
    return diff.max().item(), ok


def correctness_checks(dtype: torch.dtype) -> list[dict[str, Any]]:
    """Each Triton kernel against its twin on the same Llama-3.1-8B-sized inputs."""
    results = []

    def record(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
        err, ok = max_error(actual, expected, dtype)
        results.append(
            {"kernel": name, "dtype": str(dtype).removeprefix("torch."), "max_abs_err": err, "pass": ok}
        )

    mixed = PagedInputs(
        [2048, 512, 1, 1, 1, 1, 1, 1, 1, 1], [2048, 2048, 1, 17, 300, 1000, 2049, 4096, 8191, 8192], dtype
    )
    record("paged_attention (prefill+chunk+decodes)", mixed.paged(triton_kernels), mixed.paged(reference))
    lens = torch.randint(1, 8192, (64,)).tolist()
    lens[5] = lens[40] = 0  # CUDA-graph padding rows
    batch = PagedInputs([1] * 64, lens, dtype)
    record("decode_attention (B=64, mixed lens)", batch.decode(triton_kernels), batch.decode(reference))
    single = PagedInputs([1], [8192], dtype)
    record("decode_attention (B=1, 8192, split)", single.decode(triton_kernels), single.decode(reference))

    tokens = 4096
    x = torch.randn(tokens, HIDDEN_SIZE, dtype=dtype, device="cuda")
    residual = torch.randn_like(x)
    weight = (1 + 0.1 * torch.randn(HIDDEN_SIZE, device="cuda")).to(dtype)
    record("rms_norm", triton_kernels.rms_norm(x, weight, RMS_EPS), reference.rms_norm(x, weight, RMS_EPS))
    y, new_res = triton_kernels.fused_add_rms_norm(x, residual, weight, RMS_EPS)
    y_ref, new_res_ref = reference.fused_add_rms_norm(x, residual, weight, RMS_EPS)
    record("fused_add_rms_norm (y)", y, y_ref)
    record("fused_add_rms_norm (residual)", new_res, new_res_ref)

    qkv = torch.randn(tokens, (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, dtype=dtype, device="cuda")
    q, k, v = qkv.view(tokens, -1, HEAD_DIM).split([NUM_Q_HEADS, NUM_KV_HEADS, NUM_KV_HEADS], dim=1)
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM)
    freqs = torch.outer(torch.arange(8192, device="cuda").float(), inv_freq)
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    (q_out, k_out), (q_ref, k_ref) = (
        triton_kernels.apply_rotary(q, k, positions, cos_sin),
        reference.apply_rotary(q, k, positions, cos_sin),
    )
    record("apply_rotary (q)", q_out, q_ref)
    record("apply_rotary (k)", k_out, k_ref)

    gate_up = torch.randn(tokens, 2 * INTERMEDIATE_SIZE, dtype=dtype, device="cuda")
    record("silu_and_mul", triton_kernels.silu_and_mul(gate_up), reference.silu_and_mul(gate_up))

    num_blocks = tokens // BLOCK_SIZE + 8
    caches = [
        torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device="cuda")
        for _ in range(2)
    ]
    twins = [c.clone() for c in caches]
    slots = torch.randperm(num_blocks * BLOCK_SIZE, device="cuda")[:tokens]
    slots[::7] = -1  # padding
    triton_kernels.store_kv_cache(k, v, caches[0], caches[1], slots)
    reference.store_kv_cache(k, v, twins[0], twins[1], slots)
    record("store_kv_cache (k)", caches[0], twins[0])
    record("store_kv_cache (v)", caches[1], twins[1])
    return results


def time_graph(calls: Sequence[Callable[[], Any]], replays: int = 20) -> float:
    """Median µs per call of a CUDA graph that runs each call once (rotating inputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # compile and warm outside the capture
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000 / len(calls))
    del graph
    return statistics.median(samples)


def sets_for(nbytes: int) -> int:
    """How many disjoint input sets a timing rotates through so that they do not all fit in L2."""
    return max(1, min(256, math.ceil(L2_FLUSH_BYTES / max(nbytes, 1))))


def bench_decode_one(batch: int, context: int, dtype: torch.dtype) -> dict[str, Any]:
    """decode_attention and SDPA on `batch` sequences of `context` tokens each."""
    nbytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * torch.tensor([], dtype=dtype).element_size()
    sets = sets_for(nbytes)
    inputs = PagedInputs([1] * batch, [context] * batch, dtype, num_sets=sets)
    triton_us = time_graph([functools.partial(inputs.decode, triton_kernels, s) for s in range(sets)])
    q = inputs.query.view(batch, NUM_Q_HEADS, 1, HEAD_DIM)
    kv = torch.randn(sets, 2, batch, NUM_KV_HEADS, context, HEAD_DIM, dtype=dtype, device="cuda")
    sdpa = functools.partial(F.scaled_dot_product_attention, scale=SCALE, enable_gqa=True)
    sdpa_us = time_graph([functools.partial(sdpa, q, kv[s, 0], kv[s, 1]) for s in range(sets)])
    return {
        "batch": batch,
        "context": context,
        "kv_bytes": nbytes,
        "input_sets": sets,
        "triton_us": triton_us,
        "triton_GBps": nbytes / triton_us / 1e3,
        "sdpa_us": sdpa_us,
        "sdpa_GBps": nbytes / sdpa_us / 1e3,
    }


def bench_decode(dtype: torch.dtype) -> list[dict[str, Any]]:
    return [bench_decode_one(b, c, dtype) for b in DECODE_BATCHES for c in DECODE_CONTEXTS]


def bench_paged_one(name: str, q_lens: list[int], seq_lens: list[int], dtype: torch.dtype) -> dict[str, Any]:
    """paged_attention on one batch, and SDPA called per sequence with a bottom-right causal mask."""
    inputs = PagedInputs(q_lens, seq_lens, dtype)
    triton_us = time_graph([functools.partial(inputs.paged, triton_kernels)], replays=10)
    starts = inputs.query_start_loc.tolist()
    per_seq = []
    for i, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens)):
        k, v = inputs.contiguous_kv(i)
        q = inputs.query[starts[i] : starts[i + 1]].transpose(0, 1).unsqueeze(0)
        per_seq.append((q, k, v, causal_lower_right(q_len, seq_len)))

    def sdpa_batch() -> None:
        for q, k, v, mask in per_seq:
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE, enable_gqa=True)

    sdpa_us = time_graph([sdpa_batch], replays=10)
    flops, nbytes = inputs.flops(), inputs.kv_bytes()
    return {
        "case": name,
        "tokens": sum(q_lens),
        "flops": flops,
        "kv_bytes": nbytes,
        "triton_us": triton_us,
        "triton_TFLOPs": flops / triton_us / 1e6,
        "triton_GBps": nbytes / triton_us / 1e3,
        "sdpa_us": sdpa_us,
        "sdpa_TFLOPs": flops / sdpa_us / 1e6,
    }


def bench_prefill(dtype: torch.dtype) -> list[dict[str, Any]]:
    """One 4096-token prompt; 4 prompt chunks of 512 after prefixes of 0-3584; those plus 60 decodes."""
    chunks = ([512] * 4, [512, 1536, 2560, 4096])
    return [
        bench_paged_one("prefill 4096", [4096], [4096], dtype),
        bench_paged_one("4x512 chunks", *chunks, dtype),
        bench_paged_one("4x512 chunks + 60 decodes", chunks[0] + [1] * 60, chunks[1] + [2048] * 60, dtype),
    ]


def datasheet_ceilings(device_name: str) -> dict[str, float | None]:
    """Datasheet memory bandwidth and dense bf16 rate of the SXM parts, where the device is one of them."""
    for part, (gbps, tflops) in {"H100": (3350.0, 989.0), "H200": (4800.0, 989.0)}.items():
        if part in device_name:
            return {"datasheet_GBps": gbps, "datasheet_bf16_TFLOPs": tflops}
    return {"datasheet_GBps": None, "datasheet_bf16_TFLOPs": None}


def print_tables(report: dict[str, Any]) -> None:
    table = Table(title="Triton vs torch twin (max abs error)")
    for col in ("kernel", "dtype", "max abs err", "result"):
        table.add_column(col)
    for r in report["checks"]:
        table.add_row(
            r["kernel"], r["dtype"], f"{r['max_abs_err']:.2e}", "PASS" if r["pass"] else "[red]FAIL"
        )
    console.print(table)
    table = Table(title=f"decode_attention, bf16, CUDA graph (datasheet {report['datasheet_GBps']} GB/s)")
    for col in ("batch", "context", "KV MB", "triton µs", "triton GB/s", "sdpa µs", "sdpa GB/s", "speedup"):
        table.add_column(col, justify="right")
    for r in report["decode"]:
        table.add_row(
            str(r["batch"]),
            str(r["context"]),
            f"{r['kv_bytes'] / 1e6:.1f}",
            f"{r['triton_us']:.1f}",
            f"{r['triton_GBps']:.0f}",
            f"{r['sdpa_us']:.1f}",
            f"{r['sdpa_GBps']:.0f}",
            f"{r['sdpa_us'] / r['triton_us']:.2f}x",
        )
    console.print(table)
    table = Table(
        title=f"paged_attention, bf16, CUDA graph (SDPA: per sequence, contiguous K/V; "
        f"datasheet {report['datasheet_bf16_TFLOPs']} TFLOP/s)"
    )
    for col in ("case", "tokens", "triton µs", "triton TFLOP/s", "triton KV GB/s", "sdpa µs", "sdpa TFLOP/s"):
        table.add_column(col, justify="right")
    for r in report["prefill"]:
        table.add_row(
            r["case"],
            str(r["tokens"]),
            f"{r['triton_us']:.0f}",
            f"{r['triton_TFLOPs']:.0f}",
            f"{r['triton_GBps']:.0f}",
            f"{r['sdpa_us']:.0f}",
            f"{r['sdpa_TFLOPs']:.0f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    began = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "config": {
            "model": "Llama-3.1-8B",
            "num_q_heads": NUM_Q_HEADS,
            "num_kv_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM,
            "block_size": BLOCK_SIZE,
        },
        "checks": correctness_checks(torch.bfloat16) + correctness_checks(torch.float16),
        **datasheet_ceilings(torch.cuda.get_device_name()),
        "decode": bench_decode(torch.bfloat16),
        "prefill": bench_prefill(torch.bfloat16),
    }
    report["seconds"] = time.perf_counter() - began
    print_tables(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.out}")
    if not all(r["pass"] for r in report["checks"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
