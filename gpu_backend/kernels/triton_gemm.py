"""``y = x W^T`` for a few rows of x (batched decode), with W dense bf16 or ECF-coded: one Triton GEMM.

Built for the batched-decode targets of compressed weights (docs/weights-format.md, "On a GPU"):
decoding a whole weight into scratch before cuBLAS reads it moves 5.5 bytes a weight where bf16
moves 2, so batch 32 cannot come near bf16 that way. This GEMM decodes each slice of an ECF weight in
registers, as the GEMV does, and hands the tensor cores the very bf16 operand the dense form loads, so
the two forms give the same bits, which cuBLAS and a coded weight cannot.

**The operand.** A weight's K tiles hold 8 phases of G columns (weights/planes.py). The loop takes a
tile's groups GS at a time (a *slice*): each slice is one ``[BLOCK_N, 8 * GS]`` operand whose
positions run through the 8 phases in the order 0, 2, 4, 6, 1, 3, 5, 7, GS consecutive columns each.
The dense form loads it as 8 runs of GS columns a row; the ECF form decodes the slice's plane words into
four words of bf16 pairs and joins them into the same positions. One ``tl.dot`` a slice then takes its
16-column steps in the same order for both.

**One path through the tensor cores.** A Hopper warpgroup MMA (``wgmma``) takes an A operand of 64
rows; with fewer, Triton falls back to the older MMA, where the first form of this GEMM gave the two
forms unequal outputs. Both forms must also reach the MMA the same way. Two arrangements do:

- ``w_as_a`` 0 (the default): ``x W^T`` with x as A, always 64 rows (rows past M are zeros, never
  stored), and the weight tile as B. B comes from shared memory in both forms, the decoded tile stored
  there, the dense one copied there; the MMA can be as wide as the tile (``m64n{BLOCK_N}k16``).
- ``w_as_a`` 1: ``W x^T``, the weight tile as A (64 or 128 rows) and x as B, as wide as the batch.
  A decoded tile reaches the MMA from registers; with ``a_in_registers`` (the default) a dense tile passes
  through registers too, since from shared memory Triton splits the dot differently.

benchmarks/kernel_sass.py shows what each compiles to.

**Dense steps of several slices** (``dense_slices``). A slice's 8 runs of GS columns are short (32 bytes a
row at GS 16). The dense form may load several consecutive slices a step, phase by phase in longer runs, and
lay them out slice after slice: the tensor cores take a dot's columns 16 at a time in order, so one dot over
them sums as the coded form's one dot a slice does.

**Weights laid out slice by slice** (slice_order.py, a measurement for now): each slice's operand, or its
three planes' words, in one run a row, so that a loop step reads 256 bytes a row (dense, GS 16) or 192
(coded) in one piece. The sums are the same, so the bits are. `benchmarks/gemm_probe.py` times it against
the weight's own layout; the layers do not use it.

**Split K.** A projection with few rows of W (qkv, o_proj, down_proj) gives too few tiles to fill the
GPU, so the K steps may be cut into ``split_k`` runs; each writes its fp32 sums to a workspace and a
second kernel adds the runs in order, the bias after them (one run writes y itself). The sums
therefore depend on the launch (tile height, GS, split): a dense weight and its coded form are equal
under the same launch, which `gemm` picks from the shape alone (and TUNING).

Used by the layers only where ``triton_linear.BATCH_GEMM = "phases"``: then a dense model runs it at
2..``MAX_ROWS`` rows too, and a compressed one answers as it does. `benchmarks/gemm_probe.py`
times both forms against cuBLAS and checks their bits.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from gpu_backend.kernels.ecf_decode import INTERPRETED, decode_group, escape_words, weight_args
from gpu_backend.kernels.slice_order import MIN_PHASE_COLS, SliceOrdered
from gpu_backend.weights.packed import CompressedWeight
from gpu_backend.weights.planes import GROUP, tile_cols

MAX_ROWS = 64  # rows of x the layers send here; more (prefill) go to cuBLAS
# `gemm`'s launch options: the tile height, groups a slice (None: MIN_PHASE_COLS), K runs (None: enough to fill
# the GPU), warps, pipeline stages, whether the weight tile is the MMA's A operand (1) or x is (0), and, where the
# weight is, whether a dense tile reaches the tensor cores from registers, as a decoded one does (1), or straight
# from shared memory (0), and the slices a dense loop step loads at once (`_gemm_kernel`'s WIDE; K runs are cut
# in whole steps of that many slices for both forms, so the coded one still sums as the dense one does)
DEFAULTS = {"block_n": 64, "group_slice": None, "split_k": None, "num_warps": 4, "num_stages": 3, "w_as_a": 0,
            "a_in_registers": 1, "dense_slices": 1}
# Launch options by (n, k, rows_class(m)) where a sweep on the card found faster ones than DEFAULTS
# (benchmarks/gemm_probe.py writes them, compressed_decode.py --gemm-tuning loads them). A dense
# weight and its coded form take the same entry, so they stay equal.
TUNING: dict[tuple[int, int, int], dict[str, int | None]] = {}


@triton.jit
def _phase(r):
    """The phase at place ``r`` of the operand's order of phases, 0, 2, 4, 6, 1, 3, 5, 7."""
    return (r >> 2) + 4 * ((r >> 1) & 1) + 2 * (r & 1)


@triton.jit
def _operand_cols(GS: tl.constexpr, G: tl.constexpr):
    """Each operand position's column within its K tile, for a slice starting at group 0: position p is
    group p % GS of phase (0, 2, 4, 6, 1, 3, 5, 7)[p // GS], the order `_slice_operand` lays them in."""
    p = tl.arange(0, 8 * GS)
    phase = _phase(p // GS)
    # runs of GS consecutive columns starting at multiples of GS, which the compiler does not see by itself:
    # told, it loads a run in 16-byte pieces instead of one 2-byte value at a time
    return tl.max_contiguous(tl.multiple_of(phase * G + p % GS, GS), GS)


@triton.jit
def _wide_dense_operand(w_rows, base, K, BLOCK_N: tl.constexpr, G: tl.constexpr, GS: tl.constexpr,
                        WIDE: tl.constexpr, EVEN_K: tl.constexpr):
    """WIDE consecutive slices of a dense tile, starting at column ``base`` of a row, as one
    ``[BLOCK_N, WIDE * 8 * GS]`` operand: slice after slice, each in `_operand_cols`' order. Loaded phase by
    phase in runs of WIDE * GS columns (128 bytes at 4 slices of 16 groups, against 32 a slice), then laid
    out in that order: one dot over it takes the 16-column steps WIDE one-slice dots take."""
    u = tl.arange(0, 8 * WIDE * GS)
    phase = _phase(u // (WIDE * GS))
    cols = base + tl.max_contiguous(tl.multiple_of(phase * G + u % (WIDE * GS), WIDE * GS), WIDE * GS)
    if EVEN_K:
        w = tl.load(w_rows + cols[None, :])
    else:
        w = tl.load(w_rows + cols[None, :], mask=(cols < K)[None, :], other=0.0)
    w = tl.permute(tl.reshape(w, (BLOCK_N, 8, WIDE, GS)), (0, 2, 1, 3))  # [rows, slice, phase, group]
    return tl.reshape(w, (BLOCK_N, WIDE * 8 * GS))


@triton.jit
def _halves(pairs):
    """A word of bf16 pairs as its low and high bf16 values, joined on a new last axis."""
    low = (pairs & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)
    high = (pairs >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return tl.join(low, high)


@triton.jit
def _slice_operand(p02, p13, p46, p57, BLOCK_N: tl.constexpr, GS: tl.constexpr):
    """A slice's decoded pairs ([BLOCK_N, GS] each) as the [BLOCK_N, 8 * GS] operand: the joins give
    [BLOCK_N, GS, 8], the phases on the last axis, which then becomes the major one."""
    # axes a (the word p02 or p13; p46 or p57), w (phases 0-3 or 4-7), h (the word's low or high bf16):
    # r = 4a + 2w + h holds phase a + 4w + 2h, which _operand_cols follows
    w = _halves(tl.join(tl.join(p02, p13), tl.join(p46, p57)))  # [BLOCK_N, GS, 2 (a), 2 (w), 2 (h)]
    w = tl.reshape(w, (BLOCK_N, GS, 8))
    return tl.reshape(tl.permute(w, (0, 2, 1)), (BLOCK_N, 8 * GS))


@triton.jit
def _dot(a, b, acc, ASM: tl.constexpr):
    """acc + a @ b. Triton's interpreter (not ASM) multiplies bfloat16 operands wrongly, so there they
    are widened to float32 first: exactly, the same for both forms."""
    if ASM:
        return tl.dot(a, b, acc)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _slice_by_slice(x, w, acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GS: tl.constexpr, WIDE: tl.constexpr,
                    W_AS_A: tl.constexpr):
    """A wide dense step's dot in Triton's interpreter: one dot a slice, in order. The tensor cores take a
    dot's columns 16 at a time, in order, so on a GPU one dot over the step sums as the coded form's one-slice
    dots do; the interpreter's single dot would sum the whole step at once, in another order."""
    x3 = tl.reshape(x.to(tl.float32), (BLOCK_M, WIDE, 8 * GS))
    w3 = tl.reshape(w.to(tl.float32), (BLOCK_N, WIDE, 8 * GS))
    for j in tl.static_range(WIDE):
        pick = (tl.arange(0, WIDE) == j)[None, :, None]
        xj = tl.sum(tl.where(pick, x3, 0.0), axis=1)
        wj = tl.sum(tl.where(pick, w3, 0.0), axis=1)
        if W_AS_A:
            acc = _dot(wj, tl.trans(xj), acc, False)
        else:
            acc = _dot(xj, tl.trans(wj), acc, False)
    return acc


@triton.jit
def _gemm_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, base_ptr, escapes_ptr, escapes_addr,
                 plane_stride, steps_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr,
                 GS: tl.constexpr, ECF: tl.constexpr, ASM: tl.constexpr, WHOLE_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, W_AS_A: tl.constexpr, A_REGS: tl.constexpr, EVEN_K: tl.constexpr,
                 WIDE: tl.constexpr, SLICED: tl.constexpr):
    """This program's [BLOCK_N, BLOCK_M] block of W x^T over its run of K steps (a step: one slice of one
    K tile): WHOLE_K (one run), plus the bias into ``out`` = y ([M, N]), rounded as `_sum_splits_kernel`
    rounds; else as fp32 sums into ``out`` ([splits, N, M]: the run's own plane). W_AS_A: the weight tile
    is the MMA's A operand (``W x^T``), else x is (``x W^T``, then turned). EVEN_K: no column is past K, so
    no weight load needs a mask (rows of W past N load row N-1 and are never stored). WIDE: slices a dense
    step takes (`_wide_dense_operand`); a run's steps are whole multiples of it, and the coded form takes
    its slices one a step. SLICED: the weight is a `SliceOrdered` one's data (step s's values at s * 8 * GS
    of a row, dense, or its three planes' words at s * 3 * GS, ``plane_stride`` GS apart), padded, so
    its loads need no mask."""
    rows_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    safe_n = tl.minimum(rows_n, N - 1)  # rows past N load row N-1 and are never stored
    rows_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rows_m < M
    split = tl.program_id(2)
    SLICES: tl.constexpr = G // GS
    x_rows = x_ptr + rows_m[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + safe_n[:, None].to(tl.int64) * stride_wn
    offsets = _operand_cols(GS, G)
    STEP: tl.constexpr = 1 if ECF else WIDE
    if STEP > 1:  # x's columns for the positions of WIDE slices, slice after slice
        offsets = tl.reshape(tl.arange(0, WIDE)[:, None] * GS + offsets[None, :], (WIDE * 8 * GS,))
    if W_AS_A:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ECF:
        base4 = (tl.load(base_ptr + safe_n).to(tl.int32) * 0x01010101)[:, None]
    first = split * steps_per_split
    last = tl.minimum(first + steps_per_split, tl.cdiv(K, 8 * G) * SLICES)
    for step in range(first, last, STEP):
        t = step // SLICES
        group = t * G + (step % SLICES) * GS  # the slice's first group, counted over the row
        cols = t * 8 * G + (step % SLICES) * GS + offsets
        # rows of x past M are zeros (never stored), and so are columns past K (a padded column's decoded
        # weight is finite)
        if EVEN_K:
            x = tl.load(x_rows + cols[None, :], mask=m_ok[:, None], other=0.0)
        else:
            x = tl.load(x_rows + cols[None, :], mask=m_ok[:, None] & (cols < K)[None, :], other=0.0)
        if ECF:
            if SLICED:
                words = w_rows + (step * 3 * GS + tl.arange(0, GS))[None, :]
            else:
                words = w_rows + (group + tl.arange(0, GS))[None, :]
            lo, hi, ix = tl.load(words), tl.load(words + plane_stride), tl.load(words + 2 * plane_stride)
            p02, p13, p46, p57 = decode_group(lo, hi, ix, base4, escapes_ptr, escapes_addr, ASM)
            w = _slice_operand(p02, p13, p46, p57, BLOCK_N, GS)
        else:
            if SLICED:  # the step's STEP slices lie in order, in one run
                w = tl.load(w_rows + (step * 8 * GS + tl.arange(0, STEP * 8 * GS))[None, :])
            elif STEP > 1:
                w = _wide_dense_operand(w_rows, t * 8 * G + (step % SLICES) * GS, K, BLOCK_N, G, GS, WIDE, EVEN_K)
            elif EVEN_K:
                w = tl.load(w_rows + cols[None, :])
            else:
                w = tl.load(w_rows + cols[None, :], mask=(cols < K)[None, :], other=0.0)
            if W_AS_A and A_REGS and ASM:  # through registers, as the decoded operand goes
                w = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [w], dtype=tl.bfloat16, is_pure=True,
                                              pack=2)
        if STEP > 1 and not ASM:
            acc = _slice_by_slice(x, w, acc, BLOCK_M, BLOCK_N, GS, WIDE, W_AS_A)
        elif W_AS_A:
            acc = _dot(w, tl.trans(x), acc, ASM)
        else:
            acc = _dot(x, tl.trans(w), acc, ASM)
    if not W_AS_A:
        acc = tl.trans(acc)
    ok = (rows_n < N)[:, None] & m_ok[None, :]
    if WHOLE_K:
        if HAS_BIAS:
            acc += tl.load(b_ptr + safe_n).to(tl.float32)[:, None]
        y = out_ptr + rows_m[None, :].to(tl.int64) * N + rows_n[:, None]
        tl.store(y, acc.to(out_ptr.dtype.element_ty), mask=ok)
    else:
        out = out_ptr + split.to(tl.int64) * N * M + rows_n[:, None].to(tl.int64) * M + rows_m[None, :]
        tl.store(out, acc, mask=ok)


@triton.jit
def _sum_splits_kernel(part_ptr, b_ptr, y_ptr, M, N, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """y[m, n] = the runs' sums added in run order, then the bias, rounded once to y's dtype."""
    rows_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = (rows_n < N)[:, None] & (rows_m < M)[None, :]
    at = rows_n[:, None].to(tl.int64) * M + rows_m[None, :]
    acc = tl.load(part_ptr + at, mask=ok, other=0.0)
    for split in tl.static_range(1, SPLITS):
        acc += tl.load(part_ptr + split * N * M + at, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows_n, mask=rows_n < N, other=0.0).to(tl.float32)[:, None]
    y = y_ptr + rows_m[None, :].to(tl.int64) * N + rows_n[:, None]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=ok)


def fits(x: torch.Tensor, weight: torch.Tensor | CompressedWeight) -> bool:
    """Whether ``gemm`` takes these: 2-D bf16 rows against a bf16 weight whose K tiles hold phases of
    at least 16 columns."""
    k = weight.shape[1]
    return (x.dim() == 2 and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.shape[1] == k
            and tile_cols(k) // GROUP >= MIN_PHASE_COLS
            and (isinstance(weight, (CompressedWeight, SliceOrdered)) or weight.stride(1) == 1))


def _weight_args(weight: torch.Tensor | CompressedWeight | SliceOrdered) -> tuple[torch.Tensor, int, tuple, bool]:
    """`ecf_decode.weight_args`, and the same for a `SliceOrdered` weight: its data's row stride, and, coded,
    planes ``group_slice`` words apart."""
    if not isinstance(weight, SliceOrdered):
        return weight_args(weight)
    data = weight.data
    if not weight.coded:
        return data, data.stride(0), (data, data, 0, 0), False
    escapes = escape_words(weight)
    return data, data.stride(0), (weight.exponent_base, escapes, escapes.data_ptr(), weight.group_slice), True


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few runs, so its tests cover the split
    return torch.cuda.get_device_properties(device).multi_processor_count


def rows_class(m: int) -> int:
    """The rows of x a launch is tuned for (TUNING's key): 16, 32 or 64."""
    return 16 if m <= 16 else 32 if m <= 32 else 64


def launch(m: int, n: int, k: int, device: torch.device, **options: int | None) -> dict[str, int]:
    """The launch `gemm` makes for these shapes: ``options`` over TUNING's entry over DEFAULTS, the K runs
    (by default enough for about two programs an SM, each run at least 4 steps long) worked out."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown GEMM launch options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    plan = {**DEFAULTS, **TUNING.get((n, k, rows_class(m)), {}), **options}
    # x as the A operand: 64 rows, the least a warpgroup MMA takes
    block_m = plan["block_m"] = rows_class(m) if plan["w_as_a"] else 64
    g = tile_cols(k) // GROUP
    gs = plan["group_slice"] = plan["group_slice"] or MIN_PHASE_COLS
    if g % gs:
        raise ValueError(f"a slice of {gs} groups does not divide this weight's K tiles' {g}")
    wide = plan["dense_slices"]
    if wide < 1 or (g // gs) % wide:
        raise ValueError(f"dense_slices must divide the {g // gs} slices of this weight's K tiles, not {wide}")
    steps = triton.cdiv(k, 8 * g) * (g // gs)
    split_k = plan["split_k"]
    if split_k is None:
        tiles = triton.cdiv(n, plan["block_n"]) * triton.cdiv(m, block_m)
        split_k = max(1, min(triton.cdiv(2 * _multiprocessors(device), tiles), steps // 4))
    plan["steps_per_split"] = wide * triton.cdiv(triton.cdiv(steps, max(1, min(split_k, steps))), wide)
    plan["split_k"] = triton.cdiv(steps, plan["steps_per_split"])
    return plan


# (the kernel's compile-time arguments and warps, the stages asked for) -> the stages whose buffers fit
_STAGES_THAT_FIT: dict[tuple, int] = {}


def _launch_within_shared_memory(grid: tuple[int, ...], args: tuple, constants: dict, num_stages: int) -> None:
    """Launch `_gemm_kernel` with ``num_stages`` or, where the pipeline's buffers would pass the GPU's shared
    memory (wide slices with x as A: 64 rows of x and the weight tile per stage), with as many fewer as it
    takes. Pipelining only hides loads: the sums, and so the bits, are the same at any number of stages.
    Triton finds the overflow when it loads the compiled kernel, before anything runs."""
    key = (tuple(sorted(constants.items())), num_stages)
    stages = _STAGES_THAT_FIT.get(key, num_stages)
    while True:
        try:
            _gemm_kernel[grid](*args, **constants, num_stages=stages)
        except OutOfResources:
            if stages == 1:
                raise
            stages -= 1
            continue
        _STAGES_THAT_FIT[key] = stages
        return


def gemm(x: torch.Tensor, weight: torch.Tensor | CompressedWeight | SliceOrdered, bias: torch.Tensor | None = None,
         **options: int | None) -> torch.Tensor:
    """``x W^T + b`` (bf16, [M, N]) in the slice order above; ``fits(x, weight)`` must hold. ``options``
    (DEFAULTS' names) override the launch; a dense weight and its coded form give equal bits under equal
    ones, in either layout (a `SliceOrdered` weight takes its own slices)."""
    return _gemm(x, weight, bias, options, warmup=False)


def compile_ahead(x: torch.Tensor, weight: torch.Tensor | CompressedWeight | SliceOrdered,
                  bias: torch.Tensor | None = None, **options: int | None) -> None:
    """Compile the kernels ``gemm(x, weight, bias, **options)`` would launch, without launching them: inside
    ``triton.AsyncCompileMode`` (benchmarks/gemm_probe.py), many launches compile at once in a thread pool."""
    _gemm(x, weight, bias, options, warmup=True)


def _gemm(x: torch.Tensor, weight: torch.Tensor | CompressedWeight | SliceOrdered, bias: torch.Tensor | None,
          options: dict[str, int | None], warmup: bool) -> torch.Tensor:
    if not fits(x, weight):
        raise ValueError(f"the phase GEMM takes 2-D bf16 rows and a bf16 weight with K tiles of 128+ columns, "
                         f"not {tuple(x.shape)} {x.dtype} against {tuple(weight.shape)} {weight.dtype}")
    sliced = isinstance(weight, SliceOrdered)
    if sliced:
        if options.get("group_slice") not in (None, weight.group_slice):
            raise ValueError(f"this weight is laid out in slices of {weight.group_slice} groups, "
                             f"not {options['group_slice']}")
        options = {**options, "group_slice": weight.group_slice}
    x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    plan = launch(m, n, k, x.device, **options)
    block_m, block_n, splits = plan["block_m"], plan["block_n"], plan["split_k"]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    out = y if splits == 1 else torch.empty((splits, n, m), dtype=torch.float32, device=x.device)  # the runs' sums
    w, stride_wn, ecf_args, ecf = _weight_args(weight)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), splits)
    args = (x, w, bias if bias is not None else x, out, m, n, k, x.stride(0), stride_wn, *ecf_args,
            plan["steps_per_split"])
    constants = {"BLOCK_M": block_m, "BLOCK_N": block_n, "G": tile_cols(k) // GROUP, "GS": plan["group_slice"],
                 "ECF": ecf, "ASM": not INTERPRETED, "WHOLE_K": splits == 1, "HAS_BIAS": bias is not None,
                 "W_AS_A": bool(plan["w_as_a"]), "A_REGS": bool(plan["w_as_a"] and plan["a_in_registers"]) and not ecf,
                 "EVEN_K": k % tile_cols(k) == 0, "WIDE": plan["dense_slices"], "SLICED": sliced,
                 "num_warps": plan["num_warps"]}
    sum_grid = (triton.cdiv(n, 64), triton.cdiv(m, block_m))
    sum_args = (out, bias if bias is not None else out, y, m, n)
    sum_constants = {"SPLITS": splits, "HAS_BIAS": bias is not None, "BLOCK_N": 64, "BLOCK_M": block_m, "num_warps": 4}
    if warmup:
        _gemm_kernel.warmup(*args, grid=grid, **constants, num_stages=plan["num_stages"])
        if splits > 1:
            _sum_splits_kernel.warmup(*sum_args, grid=sum_grid, **sum_constants)
        return y
    _launch_within_shared_memory(grid, args, constants, plan["num_stages"])
    if splits > 1:
        _sum_splits_kernel[sum_grid](*sum_args, **sum_constants)
    return y
