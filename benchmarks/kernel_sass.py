"""The phase GEMM (kernels/triton_gemm.py) compiled for a Hopper GPU on a machine without one: per launch,
for the coded and the dense form in each way of driving the MMA (x as its A operand; the weight tile as A,
a dense one through registers or straight from shared memory): registers, spills, shared memory, the
tensor-core instruction, how many dots a K step is cut into and where their A operand comes from, and
the K loop's SASS instructions and barriers. No timing: what it shows is whether both forms drive the tensor cores alike
(the precondition of their equal bits) and whether a launch fits before a device call is spent on it.

With ``--gemv``, the batch-1 phase-sum GEMV instead, both forms, in K tiles of 1,024 and of 128 (several a step).

Needs triton with its NVIDIA backend (ptxas and cuobjdump ship in the wheel); runs on CPU.

    PYTHONPATH=.:sdk python3 benchmarks/kernel_sass.py [--launch BLOCK_M,BLOCK_N,GS,WARPS,STAGES[,WIDE[,SLICED]] ...]
        [--out FILE]

BLOCK_M applies where the weight is the A operand; with x as A it is always 64.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from gpu_backend.kernels import triton_gemm

# (coded?, weight tile as the MMA's A operand?, a dense one through registers?), by name
FORMS = {"ecf, x as A": (True, False, False), "dense, x as A": (False, False, False),
         "ecf, W as A": (True, True, False), "dense, W as A": (False, True, True),
         "dense, W as A from shared": (False, True, False)}
DEFAULT_LAUNCHES = ("64,64,16,4,3", "64,64,16,4,4", "64,128,16,4,3", "64,128,16,8,3", "64,128,16,8,4", "64,64,32,4,3",
                    "32,64,16,4,3", "16,64,16,4,3")
# arguments the launcher passes as multiples of 16, which Triton specializes on at run time: so must we here
DIVISIBLE_BY_16 = ("x_ptr", "w_ptr", "b_ptr", "out_ptr", "N", "K", "stride_xm", "stride_wn", "base_ptr",
                   "escapes_ptr", "plane_stride")


def compile_gemm(ecf: bool, block_m: int, block_n: int, gs: int, num_warps: int, num_stages: int,
                 capability: int = 90, w_as_a: bool = False, a_regs: bool = False, wide: int = 1,
                 sliced: bool = False, tile: int = 1024):
    """The GEMM kernel of one form for a weight with K tiles of ``tile`` columns (1,024: G = 128, every Llama-3
    shape), in its own layout or laid out slice by slice (kernels/slice_order.py)."""
    signature = {"x_ptr": "*bf16", "w_ptr": "*i32" if ecf else "*bf16", "b_ptr": "*bf16", "out_ptr": "*bf16",
                 "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_wn": "i32",
                 "base_ptr": "*u8" if ecf else "*bf16", "escapes_ptr": "*i64" if ecf else "*bf16",
                 "escapes_addr": "i64", "plane_stride": "i32", "steps_per_split": "i32"}
    constants = {"BLOCK_M": block_m, "BLOCK_N": block_n, "G": tile // 8, "GS": gs, "ECF": ecf, "ASM": True,
                 "WHOLE_K": True, "HAS_BIAS": False, "W_AS_A": w_as_a, "A_REGS": a_regs,
                 "EVEN_K": True, "WIDE": wide, "SLICED": sliced}
    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in DIVISIBLE_BY_16}
    source = ASTSource(triton_gemm._gemm_kernel, {**signature, **dict.fromkeys(constants, "constexpr")}, constants,
                       attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 128),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def compile_gemv(ecf: bool, tile: int, prefetch: bool, block_n: int = 8, capability: int = 90):
    """The batch-1 phase-sum GEMV (triton_linear._gemv_kernel) of one form for a weight with K tiles of ``tile``
    columns, as `_gemv` launches it for 4,096 columns: several narrow tiles a step (ecf_decode.tiles_a_step)."""
    from gpu_backend.kernels import ecf_decode, triton_linear
    from gpu_backend.weights import planes

    with planes.tiles_at_most(tile):
        tiles = ecf_decode.tiles_a_step(4096)
    signature = {"x_ptr": "*bf16", "w_ptr": "*i32" if ecf else "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16",
                 "res_ptr": "*bf16", "norm_w_ptr": "*bf16", "new_res_ptr": "*bf16", "N": "i32", "K": "i32",
                 "stride_wn": "i32", "eps": "fp32", "base_ptr": "*u8" if ecf else "*bf16",
                 "escapes_ptr": "*i64" if ecf else "*bf16", "escapes_addr": "i64", "plane_stride": "i32"}
    constants = {"HAS_BIAS": False, "BLOCK_N": block_n, "G": tile // 8, "PROLOGUE": 0, "HAS_RESIDUAL": False,
                 "BLOCK_ROW": 1, "USE_PDL": True, "ECF": ecf, "EVEN_K": True, "ASM": True, "PREFETCH": prefetch,
                 "TILES": tiles}
    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]]
             for name in ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "K", "stride_wn", "base_ptr", "plane_stride")}
    source = ASTSource(triton_linear._gemv_kernel, {**signature, **dict.fromkeys(constants, "constexpr")}, constants,
                       attrs)
    return tiles, triton.compile(source, target=GPUTarget("cuda", capability, 128), options={"num_warps": 8})


def gemv_rows(capability: int) -> list[dict]:
    """Both GEMV forms, loading ahead or not, in K tiles of 1,024 and of 128: what each compiles to."""
    rows = []
    for tile in (1024, 128):
        for ecf in (True, False):
            for prefetch in (False, True):
                tiles, kernel = compile_gemv(ecf, tile, prefetch, capability=capability)
                row = {"tile": tile, "tiles_a_step": tiles, "form": "ecf" if ecf else "dense phases",
                       "prefetch": prefetch, **describe(kernel)}
                rows.append(row)
                print(f"GEMV tiles of {tile:4} ({tiles} a step) {row['form']:12} prefetch {prefetch!s:5}: "
                      f"{row['registers']} regs, {row['spill_loads'] + row['spill_stores']} spill ops, "
                      f"{row['loop_instructions']} instructions and {row['loop_global_loads']} loads a step",
                      flush=True)
    return rows


def _cuobjdump(*args: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return subprocess.run([str(tool), *args], capture_output=True, text=True, check=True).stdout


def describe(kernel) -> dict:
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    dots = [line for line in ttgir.splitlines() if "ttng.warp_group_dot " in line]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = _cuobjdump("-res-usage", cubin.name)
        sass = _cuobjdump("-sass", cubin.name)
    opcodes = Counter(re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", sass, re.M))
    loop = _main_loop(sass)
    registers = re.search(r"REG:(\d+)", usage)
    return {"registers": int(registers.group(1)) if registers else None, "spill_loads": opcodes["LDL"],
            "spill_stores": opcodes["STL"], "shared_bytes": kernel.metadata.shared,
            "mma": sorted(set(re.findall(r"wgmma\.mma_async[\w.]*|mma\.sync[\w.]*", ptx))),
            "async_copies": "cp.async" in ptx, "sass_instructions": sum(opcodes.values()),
            # how the loop drives the warpgroup MMA: the dots a K step is cut into, and where A comes from
            "warpgroup_dots": len(dots),
            "a_from": sorted({"registers" if "dot_op<{opIdx = 0" in line else "shared" for line in dots}),
            "top_opcodes": dict(opcodes.most_common(12)),
            "loop_instructions": len(loop), "loop_barriers": sum("BAR.SYNC" in line for line in loop),
            # global loads a step: asynchronous copies into shared memory, and loads into registers
            "loop_async_copies": sum("LDGSTS" in line for line in loop),
            "loop_global_loads": sum(bool(re.search(r"\bLDG\b", line)) for line in loop)}


def _main_loop(sass: str) -> list[str]:
    """The SASS lines of the kernel's K loop: from the target of its backward branch to that branch (the
    longest such span)."""
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    address = [int(re.match(r"\s+/\*([0-9a-f]{4})\*/", line).group(1), 16) for line in lines]
    best: list[str] = []
    for here, line in zip(address, lines):
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", line)
        if target and int(target.group(1), 16) < here:
            body = [other for at, other in zip(address, lines) if int(target.group(1), 16) <= at <= here]
            best = max(best, body, key=len)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launch", action="append",
                        help="BLOCK_M,BLOCK_N,GS,WARPS,STAGES[,DENSE_SLICES[,SLICED]] (repeatable; slices a dense "
                             "step loads, default 1; SLICED 1: the weight laid out slice by slice, default 0)")
    parser.add_argument("--capability", type=int, default=90)
    parser.add_argument("--tile", type=int, default=1024, help="the weight's K tiles (128: the probe's tile128)")
    parser.add_argument("--gemv", action="store_true",
                        help="the batch-1 GEMV instead, both forms, in K tiles of 1,024 and of 128")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.gemv:
        record = {"benchmark": "kernel_sass --gemv", "python": platform.python_version(), "triton": triton.__version__,
                  "capability": args.capability, "device": "none: compiled for the capability, not run",
                  "weight": "4,096 columns, 8 rows a program", "gemv": gemv_rows(args.capability)}
        if args.out:
            args.out.write_text(json.dumps(record, indent=2) + "\n")
        return
    rows = []
    for launch in args.launch or DEFAULT_LAUNCHES:
        block_m, block_n, gs, warps, stages, wide, sliced = ([int(v) for v in launch.split(",")] + [1, 0])[:7]
        if (args.tile // 8) % (gs * wide):
            print(f"{launch:16} skipped: slices of {gs} groups, {wide} a dense step, do not divide K tiles of "
                  f"{args.tile // 8} groups")
            continue
        row = {"block_m": block_m, "block_n": block_n, "group_slice": gs, "num_warps": warps, "num_stages": stages,
               "dense_slices": wide, "slice_ordered": bool(sliced)}
        for form, (ecf, w_as_a, a_regs) in FORMS.items():
            row[form] = describe(compile_gemm(ecf, block_m if w_as_a else 64, block_n, gs, warps, stages,
                                              args.capability, w_as_a, a_regs, wide, bool(sliced), args.tile))
        driven = ("mma", "warpgroup_dots", "a_from")
        for dense, ecf in (("dense, x as A", "ecf, x as A"), ("dense, W as A", "ecf, W as A")):
            row[f"{dense}: drives the MMA as ECF does"] = all(row[dense][key] == row[ecf][key] for key in driven)
        rows.append(row)
        print(f"{launch:16} " + "; ".join(
            f"{form}: {row[form]['registers']} regs, {row[form]['spill_loads'] + row[form]['spill_stores']} spill ops, "
            f"{row[form]['shared_bytes'] // 1024} KB shared, {','.join(row[form]['mma']) or 'no MMA'} x "
            f"{row[form]['warpgroup_dots']}, A from {'/'.join(row[form]['a_from'])}, "
            f"{row[form]['loop_instructions']} instructions, {row[form]['loop_barriers']} barriers, "
            f"{row[form]['loop_async_copies']} async copies and {row[form]['loop_global_loads']} loads a step"
            for form in FORMS), flush=True)
        print("    " + "; ".join(f"{key}: {value}" for key, value in row.items() if key.endswith("ECF does")))
    if args.out:
        record = {"benchmark": "kernel_sass", "python": platform.python_version(), "triton": triton.__version__,
                  "capability": args.capability, "device": "none: compiled for the capability, not run",
                  "weight": f"K tiles of {args.tile:,} columns (G = {args.tile // 8})", "launches": rows}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
