"""The Triton batch-1 GEMV, both dense forms, against F.linear on CUDA; other inputs fall through to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend.kernels import get_kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True, params=["tiles", "phases"])
def dense_gemv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs on both dense GEMVs (triton_linear.DENSE_GEMV)."""
    from gpu_backend.kernels import triton_linear

    monkeypatch.setattr(triton_linear, "DENSE_GEMV", request.param)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (28672, 4096), (1000, 777)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_linear_equals_norm_then_gemv(dtype: torch.dtype, n: int, k: int, with_residual: bool) -> None:
    """The norm inside the GEMV rounds where the separate kernels do: same residual bit for bit,
    output within a rounding step of the two-kernel path."""
    from gpu_backend.kernels import triton_linear

    kernels = get_kernels("triton")
    generator = torch.Generator(device="cuda").manual_seed(n + k + with_residual)
    x = 3 * torch.randn(1, k, device="cuda", dtype=dtype, generator=generator)
    residual = torch.randn(1, k, device="cuda", dtype=dtype, generator=generator) if with_residual else None
    norm_weight = 1 + 0.1 * torch.randn(k, device="cuda", dtype=dtype, generator=generator)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=generator) * k**-0.5
    y, new_residual = kernels.rms_norm_linear(x, residual, norm_weight, 1e-5, w, None)
    if residual is None:
        normed, expected_residual = kernels.rms_norm(x, norm_weight, 1e-5), x
    else:
        normed, expected_residual = kernels.fused_add_rms_norm(x, residual, norm_weight, 1e-5)
    assert torch.equal(new_residual, expected_residual)
    torch.testing.assert_close(y.float(), kernels.linear(normed, w, None).float(), atol=2e-2, rtol=2e-2)
    if triton_linear.DENSE_GEMV == "phases":  # the separate kernels, as an ECF weight takes them: the same bits
        assert torch.equal(y, kernels.linear(normed, w, None))
    # several rows take the separate kernels
    y2, r2 = kernels.rms_norm_linear(x.repeat(2, 1), None if residual is None else residual.repeat(2, 1),
                                     norm_weight, 1e-5, w, None)
    assert y2.shape == (2, n) and torch.equal(r2[0], new_residual[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), [(4096, 14336), (500, 300)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_silu_and_mul_linear_equals_silu_then_gemv(dtype: torch.dtype, n: int, k: int, with_bias: bool) -> None:
    from gpu_backend.kernels import triton_linear

    kernels = get_kernels("triton")
    generator = torch.Generator(device="cuda").manual_seed(n + k)
    gate_up = torch.randn(1, 2 * k, device="cuda", dtype=dtype, generator=generator)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=generator) * k**-0.5
    b = torch.randn(n, device="cuda", dtype=dtype, generator=generator) if with_bias else None
    expected = kernels.linear(kernels.silu_and_mul(gate_up), w, b)
    torch.testing.assert_close(kernels.silu_and_mul_linear(gate_up, w, b).float(), expected.float(),
                               atol=2e-2, rtol=2e-2)
    if triton_linear.DENSE_GEMV == "phases":
        assert torch.equal(kernels.silu_and_mul_linear(gate_up, w, b), expected)
