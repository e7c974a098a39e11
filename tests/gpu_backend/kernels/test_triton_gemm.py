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
    NEEDS_CUDA,
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


def _stacked(n: int, k: int, device: str) -> CompressedWeight:
    """A coded weight of two source tensors (n + n // 2 + 1 rows), each with its own window, and escapes."""
    upper, lower = _weight(n, k, n), (30 * _weight(n // 2 + 1, k, k).float()).to(torch.bfloat16)
    coded = CompressedWeight.stack([CompressedWeight.from_dense(upper), CompressedWeight.from_dense(lower)])
    assert coded.escapes.shape[0] > 0
    return coded.to(device)


# (rows of x, rows of W, columns, launch): K tiles of 128 with a padded last one; of 1024, exact, in
# slices of 32 groups and 64 and in 3 runs of K; M past one block and W rows past one block of 64; x as
# the MMA's A operand (the default) and the weight (w_as_a); dense steps of several slices (dense_slices),
# over a padded tile, in 3 runs, and with the weight as A
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "n", "k", "options"), [
    (3, 70, 250, {}), (3, 70, 250, {"w_as_a": 1}), (17, 64, 2048, {"group_slice": 32, "split_k": 1, "w_as_a": 1}),
    (5, 64, 2048, {"group_slice": 64}), (40, 130, 384, {"split_k": 3}), (40, 130, 384, {"split_k": 3, "w_as_a": 1}),
    (3, 70, 250, {"dense_slices": 2}), (17, 64, 2048, {"dense_slices": 4, "split_k": 3}),
    (5, 64, 2048, {"dense_slices": 8, "w_as_a": 1}),
])
def test_coded_weight_gives_the_dense_weights_bits(device: str, m: int, n: int, k: int, options: dict) -> None:
    from gpu_backend.kernels import triton_gemm

    coded = _stacked(n, k, device)
    dense = coded.decode()
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16).to(device)
    bias = torch.randn(dense.shape[0]).to(torch.bfloat16).to(device) if m in (17, 40) else None  # one run, 3
    got = triton_gemm.gemm(x, coded, bias, **options)
    assert torch.equal(got, triton_gemm.gemm(x, dense, bias, **options))
    expected = F.linear(x.float(), dense.float(), None if bias is None else bias.float())
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


# the weights laid out slice by slice: over a padded K tile, in 3 runs of K with a bias and the weight as A, in
# slices of 32 groups, and with dense steps of 2 slices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "n", "k", "options"), [
    (3, 70, 250, {}), (40, 130, 384, {"split_k": 3, "w_as_a": 1}), (17, 64, 2048, {"group_slice": 32}),
    (5, 64, 2048, {"dense_slices": 2}),
])
def test_slice_ordered_weights_give_the_same_bits(device: str, m: int, n: int, k: int, options: dict) -> None:
    from gpu_backend.kernels import slice_order, triton_gemm

    coded = _stacked(n, k, device)
    dense = coded.decode()
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16).to(device)
    bias = torch.randn(dense.shape[0]).to(torch.bfloat16).to(device) if m == 40 else None
    expected = triton_gemm.gemm(x, dense, bias, **options)
    group_slice = options.get("group_slice", slice_order.MIN_PHASE_COLS)
    for weight in (dense, coded):
        sliced = slice_order.slice_ordered(weight, group_slice)
        assert sliced.shape == weight.shape
        assert torch.equal(triton_gemm.gemm(x, sliced, bias, **options), expected)


def test_a_slice_ordered_weight_takes_its_own_slices() -> None:
    from gpu_backend.kernels import slice_order, triton_gemm

    sliced = slice_order.slice_ordered(_stacked(9, 2300, "cpu").decode(), 16)
    with pytest.raises(ValueError, match="laid out in slices of 16 groups, not 32"):
        triton_gemm.gemm(torch.zeros(2, 2300, dtype=torch.bfloat16), sliced, group_slice=32)


def test_narrow_phases_are_not_taken() -> None:
    from gpu_backend.kernels import triton_gemm

    x = torch.zeros(4, 96, dtype=torch.bfloat16)
    assert not triton_gemm.fits(x, torch.zeros(8, 96, dtype=torch.bfloat16))  # K tiles of 32: phases of 4
    with pytest.raises(ValueError, match="128"):
        triton_gemm.gemm(x, torch.zeros(8, 96, dtype=torch.bfloat16))


@pytest.mark.gpu
@NEEDS_CUDA
def test_linear_sends_a_few_rows_to_the_gemm_under_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_backend.kernels import triton_gemm, triton_linear

    monkeypatch.setattr(triton_linear, "BATCH_GEMM", "phases")
    coded = CompressedWeight.from_dense(_weight(256, 1024, 0)).to("cuda")
    dense = coded.decode()
    for m in (2, 64):
        x = torch.randn(m, 1024, device="cuda").to(torch.bfloat16)
        assert torch.equal(triton_linear.linear(x, coded), triton_gemm.gemm(x, dense))
        assert torch.equal(triton_linear.linear(x, dense), triton_gemm.gemm(x, dense))
    x = torch.randn(65, 1024, device="cuda").to(torch.bfloat16)  # past MAX_ROWS: cuBLAS on the decoded weight
    assert torch.equal(triton_linear.linear(x, coded), F.linear(x, dense))


def test_a_slice_must_divide_the_tiles_cpu() -> None:  # cpu: in the interpreter run, which has triton
    from gpu_backend.kernels import triton_gemm

    assert triton_gemm.launch(4, 4096, 4096, torch.device("cpu"), group_slice=32)["group_slice"] == 32
    with pytest.raises(ValueError, match="48 groups"):
        triton_gemm.launch(4, 4096, 4096, torch.device("cpu"), group_slice=48)


def test_the_split_covers_every_step_cpu() -> None:
    from gpu_backend.kernels import triton_gemm

    # down_proj: 14 K tiles of 8 slices of 16 groups, in 5 runs of 23 steps
    plan = triton_gemm.launch(32, 4096, 14336, torch.device("cpu"), split_k=5)
    assert (plan["split_k"], plan["steps_per_split"]) == (5, 23) and 5 * 23 >= 14 * 8 > 4 * 23
    plan = triton_gemm.launch(32, 4096, 14336, torch.device("cpu"), split_k=1000)  # never past one step a run
    assert plan["split_k"] * plan["steps_per_split"] >= 112 and plan["steps_per_split"] == 1


def test_runs_are_whole_dense_steps_cpu() -> None:
    from gpu_backend.kernels import triton_gemm

    # runs of 23 slices would cut dense steps of 4 slices: runs of 24 (6 steps) instead, the last one shorter
    plan = triton_gemm.launch(32, 4096, 14336, torch.device("cpu"), split_k=5, dense_slices=4)
    assert (plan["split_k"], plan["steps_per_split"]) == (5, 24)
    with pytest.raises(ValueError, match="dense_slices must divide the 8 slices"):
        triton_gemm.launch(32, 4096, 14336, torch.device("cpu"), dense_slices=3)


@pytest.mark.skipif(INTERPRETING, reason="already inside the interpreter run")
def test_gemm_interpreter() -> None:
    """Run this file's CPU variants with TRITON_INTERPRET=1 set before triton is imported."""
    run_cpu_variants(__file__, timeout_s=300)
