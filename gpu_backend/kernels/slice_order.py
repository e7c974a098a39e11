"""A weight laid out slice by slice for the phase GEMM (triton_gemm.py): each loop step's values in one run a row.

In the weight's own layout a dense slice of GS groups is 8 runs of GS columns a row (one a phase, the phases
a K tile's G columns apart), and a coded one 3 runs of GS words (one a plane). Re-laid, a slice's operand lies
in one run of 8·GS columns, and a coded slice's three planes' words side by side. The values, and their order
in the GEMM's sums, do not change. A measurement for now (benchmarks/gemm_probe.py): the layers do not use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu_backend.weights.packed import CompressedWeight
from gpu_backend.weights.planes import GROUP, tile_cols

MIN_PHASE_COLS = 16  # a tensor-core step takes 16 columns, so a slice takes at least 16 of each phase
PHASE_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # the phases of a slice's operand, in order (triton_gemm._phase)


@dataclass(frozen=True, eq=False)
class SliceOrdered:
    """A weight laid out for triton_gemm.gemm at slices of ``group_slice`` groups (module docstring).
    ``data``: dense, bf16 ``[N, padded K]``, each slice's operand in turn, in triton_gemm._operand_cols'
    order (padded columns zero); coded, the planes as int32 ``[N, slices, 3, group_slice]``,
    with the weight's window bases and escapes. Made by `slice_ordered`."""

    data: torch.Tensor
    cols: int
    group_slice: int
    exponent_base: torch.Tensor | None = None  # coded only
    escapes: torch.Tensor | None = None

    @property
    def coded(self) -> bool:
        return self.exponent_base is not None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.data.shape[0], self.cols))

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16

    @property
    def device(self) -> torch.device:
        return self.data.device


def slice_ordered(weight: torch.Tensor | CompressedWeight, group_slice: int = MIN_PHASE_COLS) -> SliceOrdered:
    """``weight`` (dense bf16 ``[N, K]`` or coded) re-laid slice by slice at ``group_slice`` groups a slice:
    a copy, the weight itself untouched."""
    k = weight.shape[1]
    tile = tile_cols(k)
    g = tile // GROUP
    if g < MIN_PHASE_COLS or g % group_slice or group_slice < MIN_PHASE_COLS:
        raise ValueError(f"a slice of {group_slice} groups does not divide this weight's K tiles' {g} "
                         f"(or is under {MIN_PHASE_COLS})")
    slices = g // group_slice
    if isinstance(weight, CompressedWeight):
        planes = weight.planes  # [3, rows, groups], the groups of whole (padded) K tiles
        rows, groups = planes.shape[1], planes.shape[2]
        data = planes.view(3, rows, groups // group_slice, group_slice).permute(1, 2, 0, 3).contiguous()
        return SliceOrdered(data, k, group_slice, weight.exponent_base, weight.escapes)
    n, tiles = weight.shape[0], -(-k // tile)
    padded = F.pad(weight, (0, tiles * tile - k)).view(n, tiles, 8, slices, group_slice)  # [n, t, phase, s, j]
    order = torch.tensor(PHASE_ORDER, device=weight.device)
    data = padded.index_select(2, order).permute(0, 1, 3, 2, 4).reshape(n, tiles * tile).contiguous()
    return SliceOrdered(data, k, group_slice)
