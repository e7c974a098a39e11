"""The phase GEMM's slice-ordered layout (kernels/slice_order.py): where each value goes, in plain torch. That the
GEMM gives the own layout's bits on it is tested with the GEMM (test_triton_gemm.py)."""

from __future__ import annotations

import pytest
import torch

from gpu_backend.kernels.slice_order import PHASE_ORDER, slice_ordered
from gpu_backend.weights.packed import CompressedWeight


def _stacked(n: int, k: int) -> CompressedWeight:
    """Two source tensors coded with their own windows, and escapes."""
    gen = torch.Generator().manual_seed(n)
    upper = 0.02 * torch.randn(n, k, generator=gen)
    upper[1, 7] = 2.0 ** 40  # escaped
    lower = 0.6 * torch.randn(n // 2 + 1, k, generator=gen)
    coded = CompressedWeight.stack([CompressedWeight.from_dense(upper.to(torch.bfloat16)),
                                    CompressedWeight.from_dense(lower.to(torch.bfloat16))])
    assert coded.escapes.shape[0] > 0
    return coded


def test_the_slice_ordered_layout() -> None:
    """Step s's operand is the row's columns in the GEMM's operand order, dense; its 3 planes' words, coded."""
    k, tile, g, gs = 2300, 256, 32, 16  # 9 K tiles of 256 columns (phases of 32), the last one padded
    coded = _stacked(9, k)
    dense = coded.decode()
    sliced = slice_ordered(dense, gs)
    assert sliced.data.shape == (dense.shape[0], 2304) and not sliced.coded and sliced.shape == dense.shape
    for step in (0, 1, 5, 17):  # the steps of 9 tiles of 2 slices
        t, s = divmod(step, g // gs)
        cols = [t * tile + phase * g + s * gs + j for phase in PHASE_ORDER for j in range(gs)]
        operand = sliced.data[:, step * 8 * gs:(step + 1) * 8 * gs]
        inside = torch.tensor(cols) < k
        assert torch.equal(operand[:, inside], dense[:, torch.tensor(cols)[inside]])
        assert not operand[:, ~inside].any()  # padded columns are zero
    words = slice_ordered(coded, gs)
    assert words.coded and words.data.shape == (dense.shape[0], 2304 // (8 * gs), 3, gs) and words.shape == coded.shape
    assert torch.equal(words.data[:, 5], coded.planes[:, :, 5 * gs:6 * gs].transpose(0, 1))
    with pytest.raises(ValueError, match="48 groups"):
        slice_ordered(dense, 48)
