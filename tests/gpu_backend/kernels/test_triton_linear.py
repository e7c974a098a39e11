"""The Triton batch-1 GEMV against F.linear on CUDA; other inputs fall through to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend.kernels import get_kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 14336), (128256, 4096), (1000, 777), (3, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_f_linear(dtype: torch.dtype, n: int, k: int, with_bias: bool) -> None:
    linear = get_kernels("triton").linear
    generator = torch.Generator(device="cuda").manual_seed(n + k)
    x = torch.randn(1, k, device="cuda", dtype=dtype, generator=generator)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=generator) * k**-0.5
    b = torch.randn(n, device="cuda", dtype=dtype, generator=generator) if with_bias else None
    expected = F.linear(x.float(), w.float(), None if b is None else b.float())
    got = linear(x, w, b)
    assert got.shape == (1, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


def test_several_rows_and_float32_use_f_linear() -> None:
    linear = get_kernels("triton").linear
    w = torch.randn(64, 32, device="cuda")
    x = torch.randn(3, 32, device="cuda")
    assert torch.equal(linear(x, w), F.linear(x, w))
    assert torch.equal(linear(x[:1], w), F.linear(x[:1], w))  # float32 keeps cuBLAS (exactness tests)
