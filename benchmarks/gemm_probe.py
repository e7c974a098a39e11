"""Batched decode through the phase GEMM (kernels/triton_gemm.py) against cuBLAS, at the Llama-3.1-8B shapes
(one GPU, one call).

First, whether the distance between a coded weight's three planes matters (`planes_apart_sweep`): the
batch-1 ECF GEMV, the scratch decode and the GEMM at 32 rows with the planes moved further apart, and both
batch-1 GEMVs in K tiles of 128. Then, per shape and number of rows (``--rows``): cuBLAS, scratch decode +
cuBLAS, and the GEMM on the dense and the coded weight (equal bits?) at each launch of a set (``--launches``),
in three layouts: the weights' own; laid out slice by slice (kernels/slice_order.py); and in K tiles of
128 columns (``tile128``). Recorded: every run, each shape's fastest launch per layout, and ``best`` (own
layout) and ``best_tile128``, which compressed_decode.py --gemm-tuning loads.

    PYTHONPATH=.:sdk python3 benchmarks/gemm_probe.py [--rows 32,64] [--shapes qkv,o_proj] [--launches SET|JSON]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from ecf_gemv_probe import SWEEP_SHAPES
from llama_shapes import environment

from gpu_backend.weights import planes
from gpu_backend.weights.packed import CompressedWeight

# the phase GEMM's launches a sweep tries: every tile height, warps and stages, in each way of driving the MMA
# (triton_gemm's module docstring), with slices of 16 groups, and of 32 where x is the A operand (and slices of 16
# with dense steps of 2: the dense form's runs of 32 groups, the coded form's slices of 16); each on the weights in
# their own layout and laid out slice by slice (``"layout": "slices"``, kernels/slice_order.py: not a launch
# option, the probe re-lays both weights for it). And with K tiles of 128 columns (``"layout": "tile128"``: the
# coded weight made with them), where a slice of 16 groups is a whole tile, so a dense step reads 256 contiguous
# bytes a row of the weight as it is; only slices of 16, one a step.
ARRANGEMENTS = ({"w_as_a": 0, "group_slice": 16}, {"w_as_a": 0, "group_slice": 32},
                {"w_as_a": 0, "group_slice": 16, "dense_slices": 2},
                {"w_as_a": 1, "a_in_registers": 1, "group_slice": 16},
                {"w_as_a": 1, "a_in_registers": 0, "group_slice": 16})
LAYOUTS = ({}, {"layout": "slices"})
TILE128_ARRANGEMENTS = [{**arrangement, "layout": "tile128"} for arrangement in ARRANGEMENTS
                        if arrangement["group_slice"] == 16 and "dense_slices" not in arrangement]
SMALL_TILE = 128  # the K tile of the "tile128" layout
LAUNCH_SETS = {
    # the whole grid in both layouts (80 launches)
    "all": [{"block_n": block_n, "num_warps": warps, "num_stages": stages, **arrangement, **layout}
            for layout in LAYOUTS for arrangement in ARRANGEMENTS for block_n in (64, 128) for warps in (4, 8)
            for stages in (3, 4)],
    # 3 stages only (4 was no faster at the median on an H100: ecf_gemv_probe_gemm_h100.json), both layouts and
    # K tiles of 128: 57 launches, what one device call has time for at one number of rows
    "layouts": [{"block_n": block_n, "num_warps": warps, "num_stages": 3, **arrangement, **layout}
                for layout in LAYOUTS for arrangement in ARRANGEMENTS for block_n in (64, 128) for warps in (4, 8)]
    + [{"block_n": block_n, "num_warps": warps, "num_stages": 3, **arrangement}
       for arrangement in TILE128_ARRANGEMENTS for block_n in (64, 128) for warps in (4, 8)]
    # and 256-row weight tiles, where x's share of each step's loads is a quarter (x as A) or less: 8 warps and
    # 2 stages, which fit the card's shared memory (kernel_sass.py: 144-160 KB, no spills)
    + [{"block_n": 256, "num_warps": 8, "num_stages": 2, **arrangement}
       for arrangement in (*TILE128_ARRANGEMENTS, ARRANGEMENTS[1], ARRANGEMENTS[3])],
}
GEMM_LAUNCHES = LAUNCH_SETS["layouts"]


def launch_options(launch: dict) -> dict:
    """A sweep launch's options for triton_gemm.gemm: all but its layout, which the probe applies to the weights."""
    return {option: value for option, value in launch.items() if option != "layout"}


def launches_argument(value: str) -> list[dict]:
    """``--launches``: a name in LAUNCH_SETS, or a JSON list of launch dicts."""
    if value in LAUNCH_SETS:
        return LAUNCH_SETS[value]
    launches = json.loads(value)
    if not isinstance(launches, list) or not all(isinstance(launch, dict) for launch in launches):
        raise argparse.ArgumentTypeError(f"--launches takes {sorted(LAUNCH_SETS)} or a JSON list of dicts")
    return launches


# bytes added between a coded weight's planes (after each plane's rows) in `planes_apart_sweep`: none (planes
# rows x groups x 4 bytes apart: 8 MiB at o_proj, a power of two), a little, and more
PLANE_PADS = (0, 256, 2048, 32 * 1024 + 256, (1 << 20) + 2048)


def planes_apart(coded: CompressedWeight, pad_bytes: int) -> CompressedWeight:
    """``coded`` with its three planes ``pad_bytes`` further apart than rows x groups words: the same values,
    which every kernel reads through the planes' stride."""
    _, rows, groups = coded.planes.shape
    stride = rows * groups + pad_bytes // 4
    spread = torch.empty(2 * stride + rows * groups, dtype=coded.planes.dtype, device=coded.planes.device)
    planes = spread.as_strided((3, rows, groups), (stride, groups, 1))
    planes.copy_(coded.planes)
    return replace(coded, planes=planes)


def planes_apart_sweep(gen: torch.Generator, shapes: list[str] | None = None) -> Iterator[dict]:
    """Whether the distance between a coded weight's planes matters: at o_proj they lie 8 MiB apart, and there
    the ECF GEMV was slower than the dense one (the only such shape) and the scratch decode took twice qkv's
    time (ecf_gemv_probe_block_n_h100.json, ecf_gemv_probe_gemm_h100.json). Per shape and PLANE_PADS: the
    batch-1 ECF GEMV, the scratch decode and the phase GEMM at 32 rows (its default launch), with the GEMV's
    and the GEMM's outputs against the planes as allocated. Then both batch-1 GEMVs in K tiles of
    SMALL_TILE, which the GEMM's "tile128" layout would bring to the GEMV too."""
    import triton.testing

    from gpu_backend.kernels import triton_gemm, triton_linear

    def bench(run) -> float:
        return triton.testing.do_bench(run, warmup=10, rep=40)

    for name, (n, k) in SWEEP_SHAPES.items():
        if shapes and name not in shapes:
            continue
        coded = CompressedWeight.from_dense((0.02 * torch.randn(n, k, device=gen.device, generator=gen)
                                             ).to(torch.bfloat16))
        x1 = torch.randn(1, k, device=gen.device, generator=gen).to(torch.bfloat16)
        x32 = torch.randn(32, k, device=gen.device, generator=gen).to(torch.bfloat16)
        gemv, gemm = triton_linear._gemv(x1, coded, None), triton_gemm.gemm(x32, coded)
        row = {"shape": name, "n": n, "k": k, "runs": []}
        for pad in PLANE_PADS:
            apart = planes_apart(coded, pad)
            row["runs"].append({
                "pad_bytes": pad, "plane_stride_bytes": apart.planes.stride(0) * 4,
                "gemv_ms": bench(lambda: triton_linear._gemv(x1, apart, None)),
                "scratch_ms": bench(lambda: triton_linear.decode_to_scratch(apart)),
                "gemm_32_rows_ms": bench(lambda: triton_gemm.gemm(x32, apart)),
                "equal": bool(torch.equal(triton_linear._gemv(x1, apart, None), gemv)
                              and torch.equal(triton_gemm.gemm(x32, apart), gemm))})
        # the batch-1 GEMVs, both forms, in the K tiles the layers use and in tiles of SMALL_TILE ("tile128")
        dense = coded.decode()
        row["gemv_phases_ms"] = bench(lambda: triton_linear._gemv(x1, dense, None))
        with planes.tiles_at_most(SMALL_TILE):
            small = CompressedWeight.from_dense(dense)
            row["tile128"] = {"gemv_ms": bench(lambda: triton_linear._gemv(x1, small, None)),
                              "gemv_phases_ms": bench(lambda: triton_linear._gemv(x1, dense, None)),
                              "equal": bool(torch.equal(triton_linear._gemv(x1, small, None),
                                                        triton_linear._gemv(x1, dense, None)))}
        print(f"GEMV {name:8} ECF / phases: {row['runs'][0]['gemv_ms'] * 1000:6.1f} / "
              f"{row['gemv_phases_ms'] * 1000:6.1f} us"
              f"; in K tiles of {SMALL_TILE}: {row['tile128']['gemv_ms'] * 1000:6.1f} / "
              f"{row['tile128']['gemv_phases_ms'] * 1000:6.1f} us{'' if row['tile128']['equal'] else ' UNEQUAL'}",
              flush=True)
        print(f"planes apart {name:8} " + "; ".join(
            f"+{run['pad_bytes']} B: GEMV {run['gemv_ms'] * 1000:6.1f} us, scratch {run['scratch_ms'] * 1000:6.1f}, "
            f"GEMM 32 rows {run['gemm_32_rows_ms'] * 1000:6.1f}{'' if run['equal'] else ' UNEQUAL'}"
            for run in row["runs"]), flush=True)
        yield row


def gemm_sweep(gen: torch.Generator, rows_list: tuple[int, ...], shapes: list[str] | None = None,
               launches: list[dict] | None = None) -> Iterator[dict]:
    """Batched decode through the phase GEMM (kernels/triton_gemm.py) at each shape and number of rows:
    cuBLAS on the dense weight, scratch decode then cuBLAS (what a coded weight runs without the GEMM),
    and the GEMM on the dense and on the coded weight at every launch of GEMM_LAUNCHES (K runs as `launch`
    picks them), with whether the two forms' outputs are equal, and, laid out slice by slice, whether they equal
    the weight's own layout's: a row per shape and number of rows, its fastest launch in each layout."""
    import torch.nn.functional as F
    import triton.testing

    from gpu_backend.kernels import slice_order, triton_gemm, triton_linear

    def bench(run) -> float:
        return triton.testing.do_bench(run, warmup=10, rep=40)

    for name, (n, k) in SWEEP_SHAPES.items():
        if shapes and name not in shapes:
            continue
        dense = (0.02 * torch.randn(n, k, device=gen.device, generator=gen)).to(torch.bfloat16)
        coded = CompressedWeight.from_dense(dense)
        sliced: dict[int, tuple] = {}  # group_slice -> (dense, coded) laid out slice by slice, made once a shape
        with planes.tiles_at_most(SMALL_TILE):
            coded_small_tiles = CompressedWeight.from_dense(dense)

        def weights(layout: str | None, options: dict):
            """The dense and the coded weight a launch of this layout runs on, and the K tiles it runs in."""
            if layout == "tile128":
                return dense, coded_small_tiles, planes.tiles_at_most(SMALL_TILE)
            if layout == "slices":
                gs = options.get("group_slice") or slice_order.MIN_PHASE_COLS
                if gs not in sliced:
                    sliced[gs] = (slice_order.slice_ordered(dense, gs), slice_order.slice_ordered(coded, gs))
                return *sliced[gs], nullcontext()
            return dense, coded, nullcontext()
        for m in rows_list:
            x = torch.randn(m, k, device=gen.device, generator=gen).to(torch.bfloat16)
            row = {"shape": name, "n": n, "k": k, "m": m, "rows_class": triton_gemm.rows_class(m),
                   "cublas_ms": bench(lambda: F.linear(x, dense)),
                   "scratch_ms": bench(lambda: F.linear(x, triton_linear.decode_to_scratch(coded))), "runs": []}
            row["compiled_ahead"] = _compile_ahead(x, launches or GEMM_LAUNCHES, weights)
            for launch_ in launches or GEMM_LAUNCHES:
                options = launch_options(launch_)
                run = {"options": launch_, "split_k": triton_gemm.launch(m, n, k, x.device, **options)["split_k"]}
                try:
                    dense_w, coded_w, tiles = weights(launch_.get("layout"), options)
                    with tiles:
                        run["bf16_ms"] = bench(lambda: triton_gemm.gemm(x, dense_w, **options))
                        run["ecf_ms"] = bench(lambda: triton_gemm.gemm(x, coded_w, **options))
                        got = triton_gemm.gemm(x, dense_w, **options)
                        run["equal"] = bool(torch.equal(triton_gemm.gemm(x, coded_w, **options), got))
                    if dense_w is not dense:  # the same sums, so the same bits as the weight's own layout
                        run["equal"] = run["equal"] and bool(torch.equal(got, triton_gemm.gemm(x, dense, **options)))
                except Exception as error:  # e.g. out of registers or shared memory at this tile
                    run["error"] = str(error)[:200]
                row["runs"].append(run)
            # timed again after the launches: if these moved, the card changed under the row (in
            # ecf_gemv_probe_gemm_h100.json's o_proj rows, launches that run alike at 32 and 64 rows took 38 us in
            # one and 150 in the other)
            row["cublas_ms_after"] = bench(lambda: F.linear(x, dense))
            row["scratch_ms_after"] = bench(lambda: F.linear(x, triton_linear.decode_to_scratch(coded)))
            for key, layout in BEST_BY_LAYOUT:
                best = _fastest(row["runs"], layout)
                row[key] = best
                if best:  # both forms equal, but are they right: against the fp32 product
                    options = launch_options(best["options"])
                    _, coded_w, tiles = weights(layout, options)
                    with tiles:
                        error = triton_gemm.gemm(x, coded_w, **options).float() - F.linear(x.float(), dense.float())
                    best["max_abs_error_vs_fp32"] = float(error.abs().max())
            print(f"GEMM {name:8} {m:2} rows: compiled ahead {row['compiled_ahead']}", flush=True)
            print(f"GEMM {name:8} {m:2} rows: cuBLAS {row['cublas_ms'] * 1000:7.1f} us "
                  f"({row['cublas_ms_after'] * 1000:.1f} after), scratch + cuBLAS {row['scratch_ms'] * 1000:7.1f} us "
                  f"({row['scratch_ms_after'] * 1000:.1f} after); "
                  + "; ".join(_best_line(row, key, layout or "own layout") for key, layout in BEST_BY_LAYOUT)
                  + f"; {sum(1 for r in row['runs'] if 'equal' in r and not r['equal'])} launches unequal, "
                  f"{sum(1 for r in row['runs'] if 'error' in r)} failed", flush=True)
            yield row


def _compile_ahead(x: torch.Tensor, launches: list[dict], weights) -> dict:
    """Compile every launch's kernels, both forms, at once in a thread pool (``triton.AsyncCompileMode``), so
    that the sweep's time goes to timing: a sweep has 200-odd kernels, about 0.75 s each one at a time (sm_90,
    compiled on this project's CPU machines). Where the mode is missing or fails, the sweep compiles as it goes."""
    import triton

    from gpu_backend.kernels import triton_gemm

    mode = getattr(triton, "AsyncCompileMode", None)
    if mode is None:
        return {"skipped": f"triton {triton.__version__} has no AsyncCompileMode"}
    started, submitted, refused = time.perf_counter(), 0, 0
    try:
        with ThreadPoolExecutor(os.cpu_count() or 4) as pool, mode(pool):
            for launch_ in launches:
                options = launch_options(launch_)
                try:
                    dense_w, coded_w, tiles = weights(launch_.get("layout"), options)
                    with tiles:
                        for weight in (dense_w, coded_w):
                            triton_gemm.compile_ahead(x, weight, **options)
                            submitted += 1
                except Exception:  # a launch that cannot be made: the sweep records why
                    refused += 1
    except Exception as error:  # a compile that failed in the pool: the sweep meets it again and records it
        return {"seconds": time.perf_counter() - started, "submitted": submitted, "error": str(error)[:200]}
    return {"seconds": time.perf_counter() - started, "submitted": submitted, "refused": refused}


# each layout's fastest launch, by key of a sweep row
BEST_BY_LAYOUT = (("best", None), ("best_slice_ordered", "slices"), ("best_tile128", "tile128"))


def _fastest(runs: list[dict], layout: str | None) -> dict | None:
    """The run of that layout with equal outputs and the least time for both forms together."""
    timed = [run for run in runs if run.get("equal") and run["options"].get("layout") == layout]
    return min(timed, key=lambda run: run["bf16_ms"] + run["ecf_ms"], default=None)


def _best_line(row: dict, key: str, label: str) -> str:
    best = row[key]
    if not best:
        return f"{label}: no launch with equal outputs"
    launch = {**launch_options(best["options"]), "split_k": best["split_k"]}
    return (f"{label} best {launch}: bf16 {best['bf16_ms'] * 1000:7.1f} us ({row['cublas_ms'] / best['bf16_ms']:.2f}x "
            f"cuBLAS), ECF {best['ecf_ms'] * 1000:7.1f} us ({row['cublas_ms'] / best['ecf_ms']:.2f}x)")


def gemm_best(sweep: list[dict], key: str = "best") -> list[dict]:
    """Each (shape, rows class)'s fastest launch with equal outputs in one layout (BEST_BY_LAYOUT's ``key``; by
    default the weights' own, the one the layers run), its launch options only: what compressed_decode.py
    --gemm-tuning loads."""
    return [{"shape": row["shape"], "n": row["n"], "k": row["k"], "rows_class": row["rows_class"],
             "options": launch_options(row[key]["options"]),
             "cublas_ms": row["cublas_ms"], "bf16_ms": row[key]["bf16_ms"], "ecf_ms": row[key]["ecf_ms"]}
            for row in sweep if row.get(key)]


def load_gemm_tuning(path: Path, key: str = "best") -> dict[tuple[int, int, int], dict[str, int]]:
    """triton_gemm.TUNING from the record a ``--gemm`` run wrote: its ``best`` (own layout) or ``best_tile128``."""
    record = json.loads(path.read_text())
    return {(e["n"], e["k"], e["rows_class"]): e["options"] for e in record.get(key, [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="32,64", help="rows of x (comma-separated)")
    parser.add_argument("--shapes", help="these shapes only (comma-separated names)")
    parser.add_argument("--launches", type=launches_argument,
                        help=f"a set ({', '.join(LAUNCH_SETS)}; default layouts) or a JSON list of option dicts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    launches = args.launches or GEMM_LAUNCHES
    record = {"benchmark": "gemm_probe", **environment(), "launches": launches, "planes_apart": [], "gemm_sweep": []}
    shapes = args.shapes.split(",") if args.shapes else None
    for shape_row in planes_apart_sweep(gen, shapes):  # first: short, and it bears on every kernel
        record["planes_apart"].append(shape_row)
        if args.out:
            args.out.write_text(json.dumps(record, indent=2) + "\n")
    for shape_rows in gemm_sweep(gen, tuple(int(m) for m in args.rows.split(",")), shapes, launches):
        record["gemm_sweep"].append(shape_rows)
        record["best"] = gemm_best(record["gemm_sweep"])
        record["best_tile128"] = gemm_best(record["gemm_sweep"], "best_tile128")
        if args.out:  # after every shape: a call that runs out of time keeps what it measured
            args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
