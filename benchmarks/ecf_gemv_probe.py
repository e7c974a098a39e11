"""Where the ECF GEMV loses time and exactness, at the Llama-3.1-8B shapes (one GPU, a few seconds).

For each weight shape: random N(0, 0.02) bf16 weights coded as they come (a few escapes per tile) and
the same weights with every rare exponent replaced (no escapes at all), the batch-1 GEMV timed on the
dense weight (both dense forms, triton_linear.DENSE_GEMV), on each coded one, and decode_to_scratch on its own; and how far the coded GEMV's output
is from the "phases" dense one's (outputs that differ, largest difference); each GEMV loading its tiles a step
ahead and not. With ``--gemm``, batched decode too (32 and 64 rows): cuBLAS, the phase GEMM on the dense
and the coded weight (equal bits?), and scratch decode + cuBLAS, then the GEMM's launch options. With
``--pieces``, batched decode through scratch a piece at a time (in CUDA graphs).

    PYTHONPATH=.:sdk python3 benchmarks/ecf_gemv_probe.py [--gemm] [--pieces] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from llama_shapes import environment

from gpu_backend.weights.packed import CompressedWeight
from gpu_backend.weights.planes import WINDOW, best_window

SHAPES = {"qkv": (6144, 4096), "gate_up": (28672, 4096), "down": (4096, 14336), "lm_head": (128256, 4096)}


def without_escapes(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with each value whose exponent is outside its window set to 0.01 (inside it)."""
    exponent = (weight.view(torch.int16).to(torch.int32) >> 7) & 0xFF
    base = best_window(exponent.to(torch.uint8))
    inside = (exponent >= base) & (exponent < base + WINDOW)
    return torch.where(inside, weight, torch.full_like(weight, 0.01))


def prefetching(run, prefetch: bool) -> float:
    """The time of ``run`` with the GEMV loading each tile a loop step ahead or not (triton_linear.GEMV_PREFETCH)."""
    import triton.testing

    from gpu_backend.kernels import triton_linear

    saved, triton_linear.GEMV_PREFETCH = triton_linear.GEMV_PREFETCH, prefetch
    try:
        return triton.testing.do_bench(run)
    finally:
        triton_linear.GEMV_PREFETCH = saved


def gemm_rows(dense: torch.Tensor, coded: CompressedWeight, gen: torch.Generator) -> dict[str, dict]:
    """Batched decode of one weight: cuBLAS on the dense weight, the phase GEMM (kernels/triton_gemm.py)
    on the dense and on the coded weight, and the scratch decode then cuBLAS, at 32 and 64 rows."""
    import torch.nn.functional as F
    import triton.testing

    from gpu_backend.kernels import triton_gemm, triton_linear

    out = {}
    for m in (32, 64):
        x = torch.randn(m, dense.shape[1], device="cuda", generator=gen).to(torch.bfloat16)
        bench = triton.testing.do_bench
        cublas_ms = bench(lambda: F.linear(x, dense))
        ecf_ms = bench(lambda: triton_gemm.gemm(x, coded))
        out[str(m)] = {"cublas_ms": cublas_ms, "bf16_ms": bench(lambda: triton_gemm.gemm(x, dense)),
                       "ecf_ms": ecf_ms, "ecf_vs_cublas": cublas_ms / ecf_ms,
                       "scratch_ms": bench(lambda: F.linear(x, triton_linear.decode_to_scratch(coded))),
                       "ecf_equals_bf16": bool(torch.equal(triton_gemm.gemm(x, coded), triton_gemm.gemm(x, dense)))}
    return out


PIECE_MB = (4, 8, 16, 32)


def overlapped_pieces(x: torch.Tensor, coded: CompressedWeight, rows: int, buffers: list[torch.Tensor],
                      side: torch.cuda.Stream) -> torch.Tensor:
    """Scratch decode in pieces, each piece decoded on ``side`` into one of two buffers while cuBLAS multiplies
    the one before on the current stream (the next decode into a buffer waits for the matmul that read it)."""
    from gpu_backend.kernels import triton_linear

    n, k = coded.shape
    main = torch.cuda.current_stream()
    freed: list[torch.cuda.Event | None] = [None, None]
    side.wait_stream(main)

    def pieces():
        for i, start in enumerate(range(0, n, rows)):
            stop, buffer = min(n, start + rows), i % 2
            with torch.cuda.stream(side):
                if freed[buffer] is not None:
                    side.wait_event(freed[buffer])
                piece = triton_linear.decode_to_scratch(coded, start, stop,
                                                        out=buffers[buffer][:(stop - start) * k].view(stop - start, k))
                ready = torch.cuda.Event()
                ready.record(side)
            main.wait_event(ready)
            yield start, stop, piece
            freed[buffer] = torch.cuda.Event()
            freed[buffer].record(main)

    y = triton_linear.matmul_in_pieces(x, pieces(), n)
    main.wait_stream(side)
    return y


def scratch_pieces(dense: torch.Tensor, coded: CompressedWeight, gen: torch.Generator) -> dict[str, dict]:
    """Batched decode through scratch a piece at a time (triton_linear.SCRATCH_PIECE_BYTES): each piece of the
    weight decoded into a buffer that may still be in L2 when cuBLAS reads it, one after the other and, with
    two buffers, decode and matmul overlapped on two streams; in CUDA graphs, against cuBLAS on the whole
    dense weight (and equal to it bit for bit?), at 32 and 64 rows."""
    import torch.nn.functional as F
    import triton.testing

    from gpu_backend.kernels import triton_linear

    n, k = dense.shape
    bench = triton.testing.do_bench_cudagraph
    coded.scratch = torch.empty(n * k, dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    out = {}
    for m in (32, 64):
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        full = F.linear(x, dense)
        row = {"cublas_ms": bench(lambda: F.linear(x, dense)),
               "scratch_ms": bench(lambda: F.linear(x, triton_linear.decode_to_scratch(coded)))}
        for mb in PIECE_MB:
            rows = triton_linear.piece_rows(k, mb << 20)
            if rows >= n:
                continue
            buffers = [torch.empty(rows * k, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
            pieces = lambda: triton_linear.matmul_in_pieces(x, triton_linear._decoded_pieces(coded, rows), n)  # noqa: E731
            overlap = lambda: overlapped_pieces(x, coded, rows, buffers, side)  # noqa: E731
            row[f"{mb}MB"] = {"rows": rows, "pieces_ms": bench(pieces), "overlapped_ms": bench(overlap),
                              "pieces_equal_cublas": bool(torch.equal(pieces(), full)),
                              "overlapped_equal_cublas": bool(torch.equal(overlap(), full))}
        out[str(m)] = row
        best = min(((min(v["pieces_ms"], v["overlapped_ms"]), key) for key, v in row.items() if isinstance(v, dict)),
                   default=None)
        print(f"pieces {n}x{k} {m:>3} rows: cuBLAS {row['cublas_ms'] * 1000:7.1f} us, whole scratch "
              f"{row['scratch_ms'] * 1000:7.1f} us; " + ", ".join(
                  f"{key} {v['pieces_ms'] * 1000:.1f} / {v['overlapped_ms'] * 1000:.1f} us overlapped (equal: "
                  f"{v['pieces_equal_cublas']}/{v['overlapped_equal_cublas']})"
                  for key, v in row.items() if isinstance(v, dict)) + f"; best {best[1] if best else '-'}", flush=True)
    coded.scratch = None
    return out


def gemm_sweep(gen: torch.Generator) -> list[dict]:
    """The phase GEMM's launch options at gate_up, 64 rows (the largest batched-decode read): the tile
    height, warps and pipeline stages, dense and coded, against cuBLAS."""
    import torch.nn.functional as F
    import triton.testing

    from gpu_backend.kernels import triton_gemm

    n, k = SHAPES["gate_up"]
    dense = (0.02 * torch.randn(n, k, device="cuda", generator=gen)).to(torch.bfloat16)
    coded = CompressedWeight.from_dense(dense)
    x = torch.randn(64, k, device="cuda", generator=gen).to(torch.bfloat16)
    cublas_ms = triton.testing.do_bench(lambda: F.linear(x, dense))
    rows = []
    for block_n in (32, 64, 128):
        for num_warps in (4, 8):
            for num_stages in (2, 3):
                options = {"block_n": block_n, "num_warps": num_warps, "num_stages": num_stages}
                try:
                    bf16_ms = triton.testing.do_bench(lambda: triton_gemm.gemm(x, dense, **options))
                    ecf_ms = triton.testing.do_bench(lambda: triton_gemm.gemm(x, coded, **options))
                except Exception as error:  # e.g. out of shared memory at this tile
                    rows.append({**options, "error": str(error)[:200]})
                    continue
                rows.append({**options, "cublas_ms": cublas_ms, "bf16_ms": bf16_ms, "ecf_ms": ecf_ms,
                             "bf16_vs_cublas": cublas_ms / bf16_ms, "ecf_vs_cublas": cublas_ms / ecf_ms})
                print(f"gate_up 64 rows {options}: cuBLAS {cublas_ms * 1000:.1f} us, phase GEMM bf16 "
                      f"{bf16_ms * 1000:.1f} us, ECF {ecf_ms * 1000:.1f} us", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--gemm", action="store_true", help="also the phase GEMM against cuBLAS, and its launch sweep")
    parser.add_argument("--pieces", action="store_true", help="also batched scratch decode a piece at a time")
    args = parser.parse_args()
    import triton.testing

    from gpu_backend.kernels import triton_linear

    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, (n, k) in SHAPES.items():
        dense = (0.02 * torch.randn(n, k, device="cuda", generator=gen)).to(torch.bfloat16)
        x = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
        bf16_ms = triton.testing.do_bench(lambda: triton_linear._gemv(x, dense, None))  # the default dense GEMV
        triton_linear.DENSE_GEMV = "phases"  # from here on: the dense form that sums as the ECF GEMV does
        row = {"shape": name, "n": n, "k": k, "bf16_ms": bf16_ms, "bf16_GB_s": n * k * 2 / bf16_ms / 1e6,
               "bf16_phases_prefetch_ms": prefetching(lambda: triton_linear._gemv(x, dense, None), True),
               "bf16_phases_ms": prefetching(lambda: triton_linear._gemv(x, dense, None), False)}
        for kind, weight in (("coded", dense), ("no_escapes", without_escapes(dense))):
            coded = CompressedWeight.from_dense(weight)
            reference = triton_linear._gemv(x, coded.decode(), None)  # "phases": equal bits expected
            got = triton_linear._gemv(x, coded, None)
            ms = triton.testing.do_bench(lambda: triton_linear._gemv(x, coded, None))
            scratch_ms = triton.testing.do_bench(lambda: triton_linear.decode_to_scratch(coded))
            row[kind] = {"escapes": coded.num_escapes, "gemv_ms": ms, "vs_bf16": bf16_ms / ms,
                         "gemv_prefetch_ms": prefetching(lambda: triton_linear._gemv(x, coded, None), True),
                         "gemv_no_prefetch_ms": prefetching(lambda: triton_linear._gemv(x, coded, None), False),
                         "coded_GB_s": coded.nbytes / ms / 1e6, "decode_to_scratch_ms": scratch_ms,
                         "outputs_differing": int((got != reference).sum()),
                         "max_abs_diff": float((got.float() - reference.float()).abs().max())}
        if args.gemm:
            row["gemm"] = gemm_rows(dense, CompressedWeight.from_dense(dense), gen)
        if args.pieces:
            row["pieces"] = scratch_pieces(dense, CompressedWeight.from_dense(dense), gen)
        rows.append(row)
        print(f"{name:8} bf16 {bf16_ms * 1000:7.1f} us ({row['bf16_GB_s']:5.0f} GB/s)  " + "  ".join(
            f"{kind}: {row[kind]['gemv_ms'] * 1000:7.1f} us ({row[kind]['vs_bf16']:.2f}x, {row[kind]['escapes']} escapes, "
            f"scratch decode {row[kind]['decode_to_scratch_ms'] * 1000:.0f} us, {row[kind]['outputs_differing']} outputs "
            f"differ by up to {row[kind]['max_abs_diff']:.3g})" for kind in ("coded", "no_escapes")), flush=True)
        triton_linear.DENSE_GEMV = "tiles"
        print(f"{name:8} loading ahead / not: bf16 phases {row['bf16_phases_prefetch_ms'] * 1000:7.1f} / "
              f"{row['bf16_phases_ms'] * 1000:7.1f} us  ECF {row['coded']['gemv_prefetch_ms'] * 1000:7.1f} / "
              f"{row['coded']['gemv_no_prefetch_ms'] * 1000:7.1f} us", flush=True)
        for m, g in row.get("gemm", {}).items():
            print(f"{name:8} {m:>3} rows: cuBLAS {g['cublas_ms'] * 1000:7.1f} us  phase GEMM bf16 {g['bf16_ms'] * 1000:7.1f} "
                  f"us  ECF {g['ecf_ms'] * 1000:7.1f} us ({g['ecf_vs_cublas']:.2f}x cuBLAS), scratch + cuBLAS "
                  f"{g['scratch_ms'] * 1000:7.1f} us; ECF == bf16 GEMM: {g['ecf_equals_bf16']}", flush=True)
    record = {"benchmark": "ecf_gemv_probe", **environment(), "results": rows}
    if args.out:  # written before the sweep too, so a call that runs out of time keeps the rows above
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if args.gemm:
        record["gemm_sweep"] = gemm_sweep(gen)
    if args.out and args.gemm:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
