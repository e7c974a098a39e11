"""The form a bfloat16 ECF weight takes in memory for the kernels: three int32 planes of 8-weight groups.

The file format (docs/weights-format.md) is made for storing and slicing; this one is made for the
GEMV, which must decode a weight in a handful of integer instructions and add the products in an
order that does not depend on how the compiler lays a tile out in registers. A loaded tensor is
recoded into it on the device it runs on (``encode``), after its rank's slice was read and checked.

**Tiles and groups.** Columns are cut into tiles of ``KT = tile_cols(cols)`` (16 to 1024; the last
tile is padded), and a tile into ``G = KT / 8`` groups of 8 weights. Group ``g`` of tile ``t`` holds
the columns ``t·KT + j·G + g`` for its 8 *phases* ``j``: so phase ``j`` of a tile's groups is a run
of ``G`` consecutive columns, and the GEMV multiplies it by ``G`` consecutive inputs.

**The planes**, int32 ``[3, rows, groups]``, one word per group in each:

- ``LOW``: byte ``j`` (bits ``8j..8j+7``) is phase ``j``'s sign and top 7 mantissa bits,
  ``sign << 7 | mantissa``, for ``j`` = 0..3;
- ``HIGH``: the same for phases 4..7;
- ``INDEX``: phase ``j``'s exponent as an offset into the row's window of 15 consecutive exponents
  (``exponent = base + index``), or 15 when it lies outside: phase ``k`` in the low nibble of byte
  ``k`` and phase ``k + 4`` in its high nibble, so one mask gives four phases' offsets a byte each.

Laid out so, a kernel decodes four weights at a time in byte lanes: their exponents are
``(INDEX & 0x0F0F0F0F) + base * 0x01010101``, the bf16 high bytes ``sign | exponent >> 1`` and low
bytes ``exponent << 7 | mantissa`` take one shift and one bit-select each, and two more make the
pairs of bf16 values (phases 0 and 2, 1 and 3) that a bf16 kernel loads as one word.

**Windows, not tables.** Each source tensor gets the window of 15 consecutive exponents that holds the
most of its weights (``exponent_base``, per row, so stacked tensors keep theirs). On trained weights
this escapes as few as the file's table of the 15 most common exponents, and it decodes with an add.

**Escapes** are whole groups: a group with any phase outside the window has its 8 weights' bfloat16
bit patterns in ``escapes`` (int32 ``[E, 4]``, in the kernel's pairs: words 0-3 hold phases 0 and 2,
1 and 3, 4 and 6, 5 and 7, the first of each in the low half), and its ``LOW`` word holds its entry
number. So a kernel needs no per-row offsets and
no prefix sums: it tests a group's index word for a nibble of 15 and, only then, loads 16 bytes.

A padded column decodes to some finite value; the kernels multiply it by an input of zero, as the
bf16 GEMV does its masked zeros, and the scratch decode never writes it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import CompressedWeightsError

LOW, HIGH, INDEX = 0, 1, 2
GROUP = 8  # weights a group, one per phase
WINDOW = 15  # exponents a window holds; index 15 is the escape
ESCAPE = 15
TILE_COLS = (1024, 512, 256, 128, 64, 32, 16)
PAIR_LOW, PAIR_HIGH = [0, 1, 4, 5], [2, 3, 6, 7]  # the phases in the low and high half of each escape word
_CHUNK_WEIGHTS = 1 << 22  # rows are recoded in chunks of about this many weights: bounded temporaries


@functools.lru_cache(maxsize=None)  # on every GEMV launch's host path
def tile_cols(cols: int) -> int:
    """The K tile of a weight with ``cols`` columns, for the ECF and the bf16 GEMV alike: the widest
    that pads at most 2% (1024 for every Llama-3 shape), else the one that pads least."""
    def padded(tile: int) -> int:
        return -(-cols // tile) * tile
    for tile in TILE_COLS:
        if padded(tile) <= cols * 1.02:
            return tile
    return min(TILE_COLS, key=lambda tile: (padded(tile), -tile))


@contextmanager
def tiles_at_most(cols: int) -> Iterator[None]:
    """Weights coded, decoded and launched meanwhile take K tiles of at most ``cols`` columns (TILE_COLS
    narrowed), whatever their width: for measurements and tests of narrow tiles. A weight must be coded and
    run in the same tiles."""
    global TILE_COLS
    saved = TILE_COLS
    TILE_COLS = tuple(tile for tile in saved if tile <= cols)
    tile_cols.cache_clear()
    try:
        yield
    finally:
        TILE_COLS = saved
        tile_cols.cache_clear()


def padded_cols(cols: int) -> int:
    tile = tile_cols(cols)
    return -(-cols // tile) * tile


def best_window(exponents: torch.Tensor) -> int:
    """The base of the 15 consecutive exponents that hold the most of ``exponents`` (uint8, any shape;
    the smallest base among equals)."""
    histogram = torch.bincount(exponents.reshape(-1).long(), minlength=256)
    running = torch.cat([histogram.new_zeros(1), histogram.cumsum(0)])
    held = running[WINDOW:] - running[:-WINDOW]  # held[b]: weights with exponent b..b+14, b = 0..241
    return int(torch.argmax(held))  # argmax returns the first of equal maxima


def _to_int32(values: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit patterns (int64) as int32, bit for bit."""
    return torch.where(values >= 1 << 31, values - (1 << 32), values).to(torch.int32)


def encode(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(planes, exponent_base, escapes, escaped_weights)`` of a bfloat16 ``[rows, cols]`` matrix,
    on its device. ``exponent_base`` is uint8 ``[rows]``, all one window."""
    if matrix.dtype != torch.bfloat16 or matrix.dim() != 2:
        raise CompressedWeightsError(f"the kernels' ECF form codes 2-D bfloat16 weights, not {matrix.dtype} "
                                     f"{list(matrix.shape)}")
    rows, cols = matrix.shape
    bits = matrix.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    base = best_window(((bits >> 7) & 0xFF).to(torch.uint8))
    kp = padded_cols(cols)
    tile = tile_cols(cols)
    groups = kp // GROUP
    device = matrix.device
    planes = torch.empty((3, rows, groups), dtype=torch.int32, device=device)
    group_escaped = torch.empty((rows, groups), dtype=torch.bool, device=device)
    escaped_weights = torch.zeros((), dtype=torch.int64, device=device)
    step = max(1, _CHUNK_WEIGHTS // kp)
    padding = _grouped(torch.arange(kp, device=device)[None], tile) >= cols  # [1, groups, 8]
    shifts = torch.arange(4, device=device) * 8
    for start in range(0, rows, step):  # no host sync in here: a GPU codes a 70B layer's tensors quickly
        chunk = _grouped(torch.nn.functional.pad(bits[start:start + step], (0, kp - cols)), tile).long()
        n = chunk.shape[0]
        exponent = (chunk >> 7) & 0xFF
        index = torch.where(padding, 0, exponent - base)  # a padded column is never an escape
        escaped = (index < 0) | (index >= WINDOW)
        index = torch.where(escaped, ESCAPE, index)
        top = ((chunk >> 8) & 0x80) | (chunk & 0x7F)
        planes[LOW, start:start + n] = _to_int32((top[..., :4] << shifts).sum(-1))
        planes[HIGH, start:start + n] = _to_int32((top[..., 4:] << shifts).sum(-1))
        planes[INDEX, start:start + n] = _to_int32((index[..., :4] << shifts).sum(-1)
                                                   | (index[..., 4:] << (shifts + 4)).sum(-1))
        group_escaped[start:start + n] = escaped.any(-1)
        escaped_weights += escaped.sum()
    # the escaped groups, row-major: entry e holds group e's 8 bit patterns, and its LOW word holds e
    where = torch.nonzero(group_escaped)
    row, group = where[:, 0], where[:, 1]
    columns = (group // (tile // GROUP) * tile + group % (tile // GROUP))[:, None] \
        + torch.arange(GROUP, device=device)[None] * (tile // GROUP)  # [E, 8], a group's phases
    values = torch.where(columns < cols, bits[row[:, None], columns.clamp(max=cols - 1)], 0).long()
    escapes = _to_int32(values[:, PAIR_LOW] | (values[:, PAIR_HIGH] << 16))
    planes[LOW, row, group] = torch.arange(where.shape[0], dtype=torch.int32, device=device)
    planes[HIGH, row, group] = 0
    exponent_base = torch.full((rows,), base, dtype=torch.uint8, device=matrix.device)
    return planes, exponent_base, escapes, int(escaped_weights)


def _grouped(columns: torch.Tensor, tile: int) -> torch.Tensor:
    """``[n, kp]`` in column order -> ``[n, groups, 8]``, a group's phases side by side."""
    n, kp = columns.shape
    return columns.reshape(n, kp // tile, GROUP, tile // GROUP).transpose(2, 3).reshape(n, kp // GROUP, GROUP)


def group_escaped(index_plane: torch.Tensor) -> torch.Tensor:
    """Which groups escape: any nibble of the index word is 15 (bool, the plane's shape)."""
    word = index_plane.long() & 0xFFFFFFFF
    both = word & (word >> 1)
    return ((both & (both >> 2)) & 0x11111111) != 0


def decode(planes: torch.Tensor, exponent_base: torch.Tensor, escapes: torch.Tensor, cols: int) -> torch.Tensor:
    """The bfloat16 ``[rows, cols]`` weight, bit for bit (plain torch, on the planes' device): the
    twin of the kernels' tile decode."""
    _, rows, groups = planes.shape
    kp = groups * GROUP
    tile = tile_cols(cols)
    if kp != padded_cols(cols):
        raise CompressedWeightsError(f"planes of {groups} groups a row do not hold {cols} columns")
    out = torch.empty((rows, cols), dtype=torch.bfloat16, device=planes.device)
    step = max(1, _CHUNK_WEIGHTS // kp)
    phases = torch.arange(GROUP, device=planes.device)
    for start in range(0, rows, step):
        words = planes[:, start:start + step].long() & 0xFFFFFFFF
        n = words.shape[1]
        lanes = 8 * phases[:4]  # a byte's bit offset in its word, for phases 0..3 (and 4..7)
        top = torch.cat([words[LOW, ..., None] >> lanes, words[HIGH, ..., None] >> lanes], -1) & 0xFF
        index = torch.cat([words[INDEX, ..., None] >> lanes, words[INDEX, ..., None] >> (lanes + 4)], -1) & 0xF
        exponent = index + exponent_base[start:start + n].long()[:, None, None]
        bits = ((top & 0x80) << 8) | ((exponent & 0xFF) << 7) | (top & 0x7F)  # [n, groups, 8]
        escaped = group_escaped(words[INDEX])
        if escaped.any():
            pairs = escapes[words[LOW][escaped]].long() & 0xFFFFFFFF  # [e, 4]
            patched = torch.empty((pairs.shape[0], GROUP), dtype=torch.long, device=pairs.device)
            patched[:, PAIR_LOW], patched[:, PAIR_HIGH] = pairs & 0xFFFF, pairs >> 16
            bits[escaped] = patched
        # [n, groups, 8] -> [n, tiles, 8 phases, G] -> columns
        dense = bits.reshape(n, kp // tile, tile // GROUP, GROUP).transpose(2, 3).reshape(n, kp)[:, :cols]
        signed = torch.where(dense >= 1 << 15, dense - (1 << 16), dense)  # the int16 of each bit pattern
        out[start:start + n] = signed.to(torch.int16).view(torch.bfloat16)
    return out
