"""The phase GEMM (kernels/triton_gemm.py): an ECF weight gives bit for bit what its decoded bf16 weight
gives, and the bf16 GEMM is a matmul. On CUDA (marked gpu) and on CPU under Triton's interpreter, in the
subprocess that test_gemm_interpreter starts with TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import (
    DEVICES,
    INTERPRETING,
    NEEDS_TRITON,
    run_cpu_variants,
)

from gpu_backend.weights.packed import CompressedWeight

pytestmark = NEEDS_TRITON


def _weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(rows, cols, generator=gen)
    for i in range(12):  # rare exponents in several rows, tiles and phases: escaped groups
        w[(5 * i) % rows, (97 * i) % cols] = (-1) ** i * 2.0 ** (30 + i)
    return w.to(torch.bfloat16)


# (rows of x, rows of W, columns): K tiles of 128 with a padded last one; of 1024, exact; M past one block
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "n", "k"), [(3, 70, 250), (17, 64, 2048), (40, 33, 384)])
def test_coded_weight_gives_the_dense_weights_bits(device: str, m: int, n: int, k: int) -> None:
    from gpu_backend.kernels import triton_gemm

    upper, lower = _weight(n, k, n), (30 * _weight(n // 2 + 1, k, k).float()).to(torch.bfloat16)
    coded = CompressedWeight.stack([CompressedWeight.from_dense(upper), CompressedWeight.from_dense(lower)])
    assert coded.escapes.shape[0] > 0
    coded = coded.to(device)
    dense = coded.decode()
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16).to(device)
    bias = torch.randn(dense.shape[0]).to(torch.bfloat16).to(device) if m == 40 else None
    got = triton_gemm.gemm(x, coded, bias)
    assert torch.equal(got, triton_gemm.gemm(x, dense, bias))
    expected = F.linear(x.float(), dense.float(), None if bias is None else bias.float())
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


def test_narrow_phases_are_not_taken() -> None:
    from gpu_backend.kernels import triton_gemm

    x = torch.zeros(4, 96, dtype=torch.bfloat16)
    assert not triton_gemm.fits(x, torch.zeros(8, 96, dtype=torch.bfloat16))  # K tiles of 32: phases of 4
    with pytest.raises(ValueError, match="128"):
        triton_gemm.gemm(x, torch.zeros(8, 96, dtype=torch.bfloat16))


@pytest.mark.skipif(INTERPRETING, reason="already inside the interpreter run")
def test_gemm_interpreter() -> None:
    """Run this file's CPU variants with TRITON_INTERPRET=1 set before triton is imported."""
    run_cpu_variants(__file__, timeout_s=300)
