"""ECF tiles decoded in registers (docs/weights-format.md, "In memory"), for the GEMV, the GEMM and
the decode into scratch: a tile's three plane words a group of 8 weights become four words of bf16
pairs, phases (0, 2), (1, 3), (4, 6) and (5, 7), the first of each in the low half.

On a GPU a few bit operations are single PTX instructions (``lop3``, ``prmt``, a predicated 16-byte
load) that the compiler does not find by itself; Triton's interpreter runs no PTX, so there the
same bits come from plain integer ops (``ASM`` false). The CUDA tests check the PTX path against
the bf16 kernels, the interpreter tests the plain one.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from gpu_backend.weights.packed import CompressedWeight
from gpu_backend.weights.planes import GROUP, padded_cols, tile_cols

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Groups of a row a GEMV or scratch-decode step takes at most: a 1,024-column K tile's (every Llama-3 shape's,
# what those kernels were tuned at). Narrower tiles are taken several a step, up to that (`tiles_a_step`).
STEP_GROUPS = 128


def tiles_a_step(k: int) -> int:
    """K tiles a GEMV or scratch-decode step takes for a weight of ``k`` columns: the most, a power of two
    dividing the tile count, whose groups stay within STEP_GROUPS (1 at tiles of 1,024 columns)."""
    groups, tiles = tile_cols(k) // GROUP, padded_cols(k) // tile_cols(k)
    step = 1
    while 2 * step * groups <= STEP_GROUPS and tiles % (2 * step) == 0:
        step *= 2
    return step


@triton.jit
def phase0_cols(G: tl.constexpr, TILES: tl.constexpr):
    """Phase 0's columns in a step of TILES K tiles of 8*G columns, from the step's first: a run of G in
    each tile (phase j's are these + j*G), laid out tile after tile as the step's TILES*G groups are."""
    if TILES == 1:
        return tl.arange(0, G)
    u = tl.arange(0, TILES * G)
    return tl.max_contiguous(tl.multiple_of((u // G) * (8 * G) + u % G, G), G)


@triton.jit
def load_tile(word_rows, plane_stride, t, G: tl.constexpr):
    """A K tile's three plane words per group (weights/planes.py): LOW, HIGH, INDEX."""
    w = word_rows + (t * G + tl.arange(0, G))[None, :]
    return tl.load(w), tl.load(w + plane_stride), tl.load(w + 2 * plane_stride)


@triton.jit
def _ecf_escapes(lo, ix, escapes_ptr, escapes_addr, ASM: tl.constexpr):
    """Which groups escape (a nibble of 15), and their 4 words of bf16 pairs (undefined elsewhere).
    ASM: one predicated 16-byte load an escaped group from ``escapes_addr`` (the list's address as an
    integer); else two 8-byte loads through ``escapes_ptr`` (the int32 [E, 4] list seen as int64 [E, 2])."""
    both = ix & (ix >> 1)
    escaped = ((both & (both >> 2)) & 0x11111111) != 0
    # an escaped group's LOW word is its entry number
    if ASM:
        e0, e1, e2, e3 = tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $4, 0; @p ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$5]; }",
            "=r,=r,=r,=r,r,l", [escaped.to(tl.int32), escapes_addr + lo.to(tl.int64) * 16],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        entry = escapes_ptr + lo.to(tl.int64) * 2
        first = tl.load(entry, mask=escaped)
        second = tl.load(entry + 1, mask=escaped)
        e0, e1 = first.to(tl.int32), (first >> 32).to(tl.int32)
        e2, e3 = second.to(tl.int32), (second >> 32).to(tl.int32)
    return escaped, e0, e1, e2, e3


@triton.jit
def _ecf_pairs(word, exponents, ASM: tl.constexpr):
    """Four weights' bf16 bits, decoded in byte lanes: ``word`` holds their sign-mantissa bytes and
    ``exponents`` their biased exponents, a byte each. Returns the pairs (bytes 0 and 2, 1 and 3)
    as bf16 words, the first of each in the low half. ASM: one PTX op per bit-select (lop3) and per
    byte shuffle (prmt), which the compiler does not find by itself; else the same bits in plain
    integer ops (Triton's interpreter runs no PTX)."""
    shifted_down = exponents >> 1
    shifted_up = exponents << 7
    if ASM:
        # lop3 0xE4 = (a & c) | (b & ~c)
        high = tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, 0x80808080, 0xE4;", "=r,r,r", [word, shifted_down],
                                         dtype=tl.int32, is_pure=True, pack=1)  # sign | exponent >> 1
        low = tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, 0x7F7F7F7F, 0xE4;", "=r,r,r", [word, shifted_up],
                                        dtype=tl.int32, is_pure=True, pack=1)  # exponent's low bit | mantissa
        even = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x6240;", "=r,r,r", [low, high],
                                         dtype=tl.int32, is_pure=True, pack=1)
        odd = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7351;", "=r,r,r", [low, high],
                                        dtype=tl.int32, is_pure=True, pack=1)
    else:
        high = (word & -2139062144) | (shifted_down & 0x7F7F7F7F)  # -2139062144 is 0x80808080
        low = (word & 0x7F7F7F7F) | (shifted_up & -2139062144)
        even = (low & 0x00FF00FF) | ((high << 8) & -16711936)  # -16711936 is 0xFF00FF00
        odd = ((low >> 8) & 0x00FF00FF) | (high & -16711936)
    return even, odd


@triton.jit
def decode_group(lo, hi, ix, base4, escapes_ptr, escapes_addr, ASM: tl.constexpr):
    """A tile's groups as four words of bf16 pairs: phases (0, 2), (1, 3), (4, 6), (5, 7)."""
    escaped, e0, e1, e2, e3 = _ecf_escapes(lo, ix, escapes_ptr, escapes_addr, ASM)
    p02, p13 = _ecf_pairs(lo, (ix & 0x0F0F0F0F) + base4, ASM)
    p46, p57 = _ecf_pairs(hi, ((ix >> 4) & 0x0F0F0F0F) + base4, ASM)
    return (tl.where(escaped, e0, p02), tl.where(escaped, e1, p13), tl.where(escaped, e2, p46),
            tl.where(escaped, e3, p57))


@triton.jit
def _ecf_decode_kernel(w_ptr, base_ptr, escapes_ptr, escapes_addr, out_ptr, N, K, stride_wn, plane_stride,
                       BLOCK_N: tl.constexpr, G: tl.constexpr, ASM: tl.constexpr, TILES: tl.constexpr):
    """TILES K tiles of BLOCK_N rows ([BLOCK_N, 8*G] each) of a weight's planes decoded into ``out`` (int16
    bits, [N, K])."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    t = tl.program_id(1)  # the step: TILES tiles
    safe_rows = tl.minimum(rows, N - 1)
    lo, hi, ix = load_tile(w_ptr + safe_rows[:, None].to(tl.int64) * stride_wn, plane_stride, t, TILES * G)
    base4 = (tl.load(base_ptr + safe_rows).to(tl.int32) * 0x01010101)[:, None]
    p02, p13, p46, p57 = decode_group(lo, hi, ix, base4, escapes_ptr, escapes_addr, ASM)
    out_rows = out_ptr + rows[:, None].to(tl.int64) * K
    c = t * 8 * TILES * G + phase0_cols(G, TILES)
    ok = (rows < N)[:, None]
    tl.store(out_rows + c[None, :], p02.to(tl.int16), mask=ok & (c < K)[None, :])
    tl.store(out_rows + (c + G)[None, :], p13.to(tl.int16), mask=ok & (c + G < K)[None, :])
    tl.store(out_rows + (c + 2 * G)[None, :], (p02 >> 16).to(tl.int16), mask=ok & (c + 2 * G < K)[None, :])
    tl.store(out_rows + (c + 3 * G)[None, :], (p13 >> 16).to(tl.int16), mask=ok & (c + 3 * G < K)[None, :])
    tl.store(out_rows + (c + 4 * G)[None, :], p46.to(tl.int16), mask=ok & (c + 4 * G < K)[None, :])
    tl.store(out_rows + (c + 5 * G)[None, :], p57.to(tl.int16), mask=ok & (c + 5 * G < K)[None, :])
    tl.store(out_rows + (c + 6 * G)[None, :], (p46 >> 16).to(tl.int16), mask=ok & (c + 6 * G < K)[None, :])
    tl.store(out_rows + (c + 7 * G)[None, :], (p57 >> 16).to(tl.int16), mask=ok & (c + 7 * G < K)[None, :])


_NO_ESCAPES: dict[torch.device, torch.Tensor] = {}


def escape_words(weight: CompressedWeight) -> torch.Tensor:
    """The escape list as the kernels read it, two 8-byte words an entry; never an empty tensor
    (its null pointer), though a weight without escapes never reads it: then one shared stand-in
    per device, made on first use (the engine's profiling step, before any graph is captured)."""
    if weight.escapes.numel():
        return weight.escapes.view(torch.int64)
    if weight.device not in _NO_ESCAPES:
        _NO_ESCAPES[weight.device] = torch.zeros(2, dtype=torch.int64, device=weight.device)
    return _NO_ESCAPES[weight.device]


def weight_args(weight: torch.Tensor | CompressedWeight) -> tuple[torch.Tensor, int, tuple, bool]:
    """What a kernel of both forms takes for its weight: ``(w, row stride, (window bases, escape
    list, its address, plane stride), is ECF)``; a dense weight fills the ECF slots with stand-ins."""
    if isinstance(weight, CompressedWeight):
        escapes = escape_words(weight)
        return (weight.planes, weight.planes.shape[2],
                (weight.exponent_base, escapes, escapes.data_ptr(), weight.planes.stride(0)), True)
    return weight, weight.stride(0), (weight, weight, 0, 0), False


def decode_to_scratch(weight: CompressedWeight) -> torch.Tensor:
    """The dense weight, decoded into its model's scratch buffer (valid until the next decode; a
    new tensor without one): the matmul for several rows (prefill, batched decode) then runs on it."""
    n, k = weight.shape
    if weight.scratch is not None:
        out = weight.scratch[:n * k].view(n, k)
    else:
        out = torch.empty((n, k), dtype=weight.dtype, device=weight.device)
    planes, stride_wn, (base, escapes, escapes_addr, plane_stride), _ = weight_args(weight)
    tile, tiles = tile_cols(k), tiles_a_step(k)
    _ecf_decode_kernel[(triton.cdiv(n, 16), stride_wn * GROUP // (tile * tiles))](
        planes, base, escapes, escapes_addr, out.view(torch.int16), n, k, stride_wn, plane_stride,
        BLOCK_N=16, G=tile // GROUP, ASM=not INTERPRETED, TILES=tiles, num_warps=8)
    return out
