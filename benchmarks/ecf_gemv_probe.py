"""Where the ECF GEMV loses time and exactness, at the Llama-3.1-8B shapes (one GPU, a few seconds).

For each weight shape: random N(0, 0.02) bf16 weights coded as they come (a few escapes per tile) and
the same weights with every rare exponent replaced (no escapes at all), the batch-1 GEMV timed on the
dense weight (both dense forms, triton_linear.DENSE_GEMV), on each coded one, and decode_to_scratch on
its own; and how far the coded GEMV's output is from the "phases" dense one's (outputs that differ,
largest difference); each GEMV loading its tiles a step ahead and not.

With ``--block-n``, only the batch-1 GEMVs' rows a program and loading ahead, for ECF and "phases", and
the best of each per shape (``best``: what compressed_decode.py --gemv-tuning loads), then the ECF GEMV
with its input's norm or SiLU fused in against the separate kernels, in CUDA graphs.

    PYTHONPATH=.:sdk python3 benchmarks/ecf_gemv_probe.py [--block-n] [--out FILE]

Batched decode (the phase GEMM) has its own probe, gemm_probe.py.
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


SWEEP_SHAPES = {"qkv": SHAPES["qkv"], "o_proj": (4096, 4096), **SHAPES}  # o_proj early: not after the LM head


def block_n_sweep(gen: torch.Generator) -> list[dict]:
    """The batch-1 GEMV's rows a program (block_n) and loading ahead, for the ECF form and the dense form that
    sums as it does ("phases"), at each shape (the sums, so the bits, are the same at every block_n)."""
    import triton.testing

    from gpu_backend.kernels import triton_linear

    rows = []
    saved = triton_linear.DENSE_GEMV, triton_linear.GEMV_PREFETCH
    try:
        for name, (n, k) in SWEEP_SHAPES.items():
            dense = (0.02 * torch.randn(n, k, device="cuda", generator=gen)).to(torch.bfloat16)
            coded = CompressedWeight.from_dense(dense)
            x = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
            triton_linear.DENSE_GEMV = "tiles"
            tiles_ms = triton.testing.do_bench(lambda: triton_linear._gemv(x, dense, None))
            triton_linear.DENSE_GEMV = "phases"
            reference = triton_linear._gemv(x, dense, None)
            row = {"shape": name, "n": n, "k": k, "tiles_ms": tiles_ms, "runs": []}
            for block_n in (2, 4, 8, 16, 32):
                for prefetch in (False, True):
                    triton_linear.GEMV_PREFETCH = prefetch
                    run = {"block_n": block_n, "prefetch": prefetch}
                    for form, weight in (("ecf", coded), ("phases", dense)):
                        try:
                            run[f"{form}_ms"] = triton.testing.do_bench(
                                lambda: triton_linear._gemv(x, weight, None, block_n=block_n))
                            run[f"{form}_equal"] = bool(torch.equal(
                                triton_linear._gemv(x, weight, None, block_n=block_n), reference))
                        except Exception as error:  # e.g. out of registers or shared memory at this tile
                            run[f"{form}_error"] = str(error)[:200]
                    row["runs"].append(run)
            rows.append(row)
            timed = [r for r in row["runs"] if "ecf_ms" in r]
            best_ecf = min(timed, key=lambda r: r["ecf_ms"], default=None)
            best_dense = min((r for r in row["runs"] if "phases_ms" in r), key=lambda r: r["phases_ms"], default=None)
            print(f"block_n {name:8} tiles {tiles_ms * 1000:6.1f} us; best ECF "
                  + (f"{best_ecf['ecf_ms'] * 1000:6.1f} us at {best_ecf['block_n']}/{best_ecf['prefetch']}"
                     if best_ecf else "-")
                  + "; best phases "
                  + (f"{best_dense['phases_ms'] * 1000:6.1f} us at {best_dense['block_n']}/{best_dense['prefetch']}"
                     if best_dense else "-")
                  + "; all equal: " + str(all(r.get("ecf_equal", True) and r.get("phases_equal", True)
                                              for r in row["runs"])), flush=True)
    finally:
        triton_linear.DENSE_GEMV, triton_linear.GEMV_PREFETCH = saved
    return rows


PROLOGUE_SHAPES = {"qkv": "norm", "gate_up": "norm", "down": "silu"}


def prologue_sweep(gen: torch.Generator, sweep: list[dict]) -> list[dict]:
    """The ECF GEMV computing its input itself (the residual add and RMS norm before qkv and gate_up, the
    SiLU before down_proj) against the separate kernel then the plain GEMV, both captured in a CUDA graph
    (as the engine runs them), at 2-16 rows a program, each loading ahead as the plain sweep found best;
    the default dense form ("tiles", which fuses them) beside. Equal: the fused output's bits are those
    of the separate kernels'."""
    import triton.testing

    from gpu_backend.kernels import triton_linear, triton_ops

    bench = triton.testing.do_bench_cudagraph
    rows = []
    saved = triton_linear.DENSE_GEMV, triton_linear.GEMV_PREFETCH
    try:
        for name, prologue in PROLOGUE_SHAPES.items():
            n, k = SHAPES[name]
            dense = (0.02 * torch.randn(n, k, device="cuda", generator=gen)).to(torch.bfloat16)
            coded = CompressedWeight.from_dense(dense)
            norm_weight = (1 + 0.1 * torch.randn(k, device="cuda", generator=gen)).to(torch.bfloat16)
            if prologue == "norm":
                x, residual = (torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
                new_residual = torch.empty_like(x)

                def fused(weight, block_n=None):
                    return triton_linear._gemv(x, weight, None, triton_linear.RMS_NORM, residual, norm_weight, 1e-5,
                                               new_residual, block_n=block_n)

                def separate(weight, block_n=None):
                    normed, _ = triton_ops.fused_add_rms_norm(x, residual, norm_weight, 1e-5)
                    return triton_linear._gemv(normed, weight, None, block_n=block_n)
            else:
                gate_up = torch.randn(1, 2 * k, device="cuda", generator=gen).to(torch.bfloat16)

                def fused(weight, block_n=None):
                    return triton_linear._gemv(gate_up, weight, None, triton_linear.SILU_MUL, block_n=block_n)

                def separate(weight, block_n=None):
                    return triton_linear._gemv(triton_ops.silu_and_mul(gate_up), weight, None, block_n=block_n)
            triton_linear.DENSE_GEMV, triton_linear.GEMV_PREFETCH = "tiles", None
            row = {"shape": name, "prologue": prologue, "tiles_fused_ms": bench(lambda: fused(dense)),
                   "tiles_separate_ms": bench(lambda: separate(dense)), "runs": []}
            plain = next(r for r in sweep if r["shape"] == name)["runs"]
            for block_n in (2, 4, 8, 16):
                timed = [r for r in plain if r["block_n"] == block_n and "ecf_ms" in r]
                if not timed:
                    continue
                triton_linear.GEMV_PREFETCH = min(timed, key=lambda r: r["ecf_ms"])["prefetch"]
                run = {"block_n": block_n, "prefetch": triton_linear.GEMV_PREFETCH}
                try:
                    run["ecf_fused_ms"] = bench(lambda: fused(coded, block_n))
                    run["ecf_separate_ms"] = bench(lambda: separate(coded, block_n))
                    run["equal"] = bool(torch.equal(fused(coded, block_n), separate(coded, block_n)))
                except Exception as error:  # e.g. out of registers at this tile
                    run["error"] = str(error)[:200]
                row["runs"].append(run)
            rows.append(row)
            print(f"prologue {name:8} ({prologue}) tiles fused {row['tiles_fused_ms'] * 1000:6.1f} us, separate "
                  f"{row['tiles_separate_ms'] * 1000:6.1f}; ECF fused / separate: " + ", ".join(
                      f"{r['block_n']}: {r['ecf_fused_ms'] * 1000:.1f} / {r['ecf_separate_ms'] * 1000:.1f}"
                      f"{'' if r['equal'] else ' (NOT EQUAL)'}" for r in row["runs"] if "equal" in r), flush=True)
    finally:
        triton_linear.DENSE_GEMV, triton_linear.GEMV_PREFETCH = saved
    return rows


def best_settings(sweep: list[dict]) -> list[dict]:
    """Per shape and form (ECF, and bf16 "phases"), the fastest rows a program and loading ahead of a
    block_n sweep whose outputs all equalled the reference: entries for triton_linear.PHASE_GEMV_TUNING."""
    best = []
    for row in sweep:
        for form, ecf in (("ecf", True), ("phases", False)):
            timed = [r for r in row["runs"] if f"{form}_ms" in r and r.get(f"{form}_equal")]
            if timed:
                pick = min(timed, key=lambda r: r[f"{form}_ms"])
                best.append({"shape": row["shape"], "n": row["n"], "k": row["k"], "ecf": ecf,
                             "block_n": pick["block_n"], "prefetch": pick["prefetch"], "ms": pick[f"{form}_ms"]})
    return best


def load_tuning(path: Path) -> dict[tuple[int, int, bool], tuple[int, bool]]:
    """triton_linear.PHASE_GEMV_TUNING from the record a ``--block-n`` run wrote."""
    record = json.loads(path.read_text())
    return {(e["n"], e["k"], e["ecf"]): (e["block_n"], e["prefetch"]) for e in record["best"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--block-n", action="store_true", help="only the GEMVs' rows a program and loading ahead")
    args = parser.parse_args()
    import triton.testing

    from gpu_backend.kernels import triton_linear

    gen = torch.Generator(device="cuda").manual_seed(0)
    if args.block_n:
        sweep = block_n_sweep(gen)
        record = {"benchmark": "ecf_gemv_probe --block-n", **environment(), "block_n_sweep": sweep,
                  "best": best_settings(sweep)}
        for entry in record["best"]:
            print(f"best {entry['shape']:8} {'ECF' if entry['ecf'] else 'phases':6} block_n {entry['block_n']:2} "
                  f"prefetch {entry['prefetch']!s:5} {entry['ms'] * 1000:6.1f} us")
        if args.out:  # the settings first: the prologue sweep after them is the part a short call may lose
            args.out.write_text(json.dumps(record, indent=2) + "\n")
        record["prologue_sweep"] = prologue_sweep(gen, sweep)
        if args.out:
            args.out.write_text(json.dumps(record, indent=2) + "\n")
        return
    rows = []
    for name, (n, k) in SHAPES.items():
        dense = (0.02 * torch.randn(n, k, device="cuda", generator=gen)).to(torch.bfloat16)
        x = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
        triton_linear.DENSE_GEMV = "tiles"  # the faster dense GEMV first
        bf16_ms = triton.testing.do_bench(lambda: triton_linear._gemv(x, dense, None))
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
        rows.append(row)
        print(f"{name:8} bf16 {bf16_ms * 1000:7.1f} us ({row['bf16_GB_s']:5.0f} GB/s)  " + "  ".join(
            f"{kind}: {row[kind]['gemv_ms'] * 1000:7.1f} us ({row[kind]['vs_bf16']:.2f}x, {row[kind]['escapes']} escapes, "
            f"scratch decode {row[kind]['decode_to_scratch_ms'] * 1000:.0f} us, {row[kind]['outputs_differing']} outputs "
            f"differ by up to {row[kind]['max_abs_diff']:.3g})" for kind in ("coded", "no_escapes")), flush=True)
        print(f"{name:8} loading ahead / not: bf16 phases {row['bf16_phases_prefetch_ms'] * 1000:7.1f} / "
              f"{row['bf16_phases_ms'] * 1000:7.1f} us  ECF {row['coded']['gemv_prefetch_ms'] * 1000:7.1f} / "
              f"{row['coded']['gemv_no_prefetch_ms'] * 1000:7.1f} us", flush=True)
    record = {"benchmark": "ecf_gemv_probe", **environment(), "results": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
