"""The ECF GEMV and decode-to-scratch kernels against the bf16 GEMV on the decoded weight, bit for bit.

Every test runs on CUDA (marked gpu, skipped without a GPU) and on CPU under Triton's interpreter,
in the subprocess that test_ecf_interpreter starts with TRITON_INTERPRET=1. The weights carry
escapes on purpose (rare exponents planted in several rows, in several K tiles of one row and in
every phase of a group), and the stacked ones two exponent windows (gate_up), so every branch of
the tile decode runs. The shapes cover K tiles of 16, 64 and 1024 columns, each with a padded last tile.
"""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import (
    DEVICES,
    INTERPRETING,
    NEEDS_CUDA,
    NEEDS_TRITON,
    run_cpu_variants,
)

from gpu_backend.kernels import reference
from gpu_backend.weights.codec import encode
from gpu_backend.weights.packed import CompressedWeight, share_scratch

pytestmark = NEEDS_TRITON


@pytest.fixture(autouse=True)
def phase_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense GEMV that sums as the ECF GEMV does (triton_linear.DENSE_GEMV "phases"): the one a coded
    weight must equal bit for bit."""
    from gpu_backend.kernels import triton_linear

    monkeypatch.setattr(triton_linear, "DENSE_GEMV", "phases")
# (rows, cols) and their K tiles (planes.tile_cols), each with a padded last one: 19 of 16 columns;
# 33 of 64; a tiny odd-width one, 5 of 16; 4 of 1024
SHAPES = [(40, 300), (24, 2100), (3, 65), (9, 4060)]


def _weight_with_escapes(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(rows, cols, generator=gen)
    planted = [(1, 0), (1, cols // 2), (1, cols - 1), (rows - 1, 3), (rows // 2, cols - 2)]
    planted += [(i % rows, (37 * i) % cols) for i in range(5, 24)]  # 24 rare exponents: most outside the window
    for i, (r, c) in enumerate(planted):
        w[r, c] = (-1) ** i * 2.0 ** (40 + 3 * i)  # exponents no other weight has: most are escaped
    return w.to(torch.bfloat16)


def _coded(tensor: torch.Tensor) -> CompressedWeight:
    return CompressedWeight.from_parts(encode(tensor), torch.bfloat16)  # as loading does: file parts, recoded


def _compressed(rows: int, cols: int, seed: int, stacked: bool) -> CompressedWeight:
    if not stacked:
        return _coded(_weight_with_escapes(rows, cols, seed))
    upper = _weight_with_escapes(rows, cols, seed)
    lower = (30 * _weight_with_escapes(rows, cols, seed + 1).float()).to(torch.bfloat16)  # another window
    return CompressedWeight.stack([_coded(upper), _coded(lower)])


def _on(device: str, weight: CompressedWeight) -> CompressedWeight:
    assert weight.num_escapes >= 5
    return weight.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "cols"), SHAPES)
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_ecf_gemv_equals_bf16_gemv(device: str, rows: int, cols: int, stacked: bool, with_bias: bool) -> None:
    from gpu_backend.kernels import triton_linear

    weight = _on(device, _compressed(rows, cols, rows + cols, stacked))
    dense = weight.decode()
    gen = torch.Generator().manual_seed(cols)
    x = torch.randn(1, cols, generator=gen).to(torch.bfloat16).to(device)
    bias = torch.randn(weight.shape[0], generator=gen).to(torch.bfloat16).to(device) if with_bias else None
    got = triton_linear._gemv(x, weight, bias)
    assert torch.equal(got, triton_linear._gemv(x, dense, bias))
    torch.testing.assert_close(got.float(), reference.linear(x, weight, bias).float(), atol=2e-2, rtol=2e-2)
    if device == "cuda":  # the public entry takes the same kernel
        assert torch.equal(triton_linear.linear(x, weight, bias), got)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "cols"), [SHAPES[0], SHAPES[3]])
def test_prefetching_gemv_sums_alike(device: str, rows: int, cols: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """GEMV_PREFETCH (each tile loaded a loop step ahead) changes no bit of either form's output."""
    from gpu_backend.kernels import triton_linear

    weight = _on(device, _compressed(rows, cols, cols, stacked=False))
    dense = weight.decode()
    x = torch.randn(1, cols, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16).to(device)
    monkeypatch.setattr(triton_linear, "GEMV_PREFETCH", False)
    plain = triton_linear._gemv(x, weight, None), triton_linear._gemv(x, dense, None)
    monkeypatch.setattr(triton_linear, "GEMV_PREFETCH", True)
    assert torch.equal(triton_linear._gemv(x, weight, None), plain[0])
    assert torch.equal(triton_linear._gemv(x, dense, None), plain[1])
    assert torch.equal(plain[0], plain[1])


@pytest.mark.parametrize("device", DEVICES)
def test_tuned_gemv_sums_alike(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PHASE_GEMV_TUNING entry (other rows a program, loading ahead) changes no bit of either form's output,
    and applies to its own shape and form only."""
    from gpu_backend.kernels import triton_linear

    rows, cols = SHAPES[3]
    weight = _on(device, _compressed(rows, cols, cols + 1, stacked=False))
    dense = weight.decode()
    x = torch.randn(1, cols, generator=torch.Generator().manual_seed(cols)).to(torch.bfloat16).to(device)
    plain = triton_linear._gemv(x, weight, None)
    assert torch.equal(plain, triton_linear._gemv(x, dense, None))
    launched = []

    class Recorded:  # the kernel, its grids and loading ahead noted
        def __getitem__(self, grid: tuple[int]):
            def launch(*args, **meta):
                launched.append((grid, meta["PREFETCH"]))
                return kernel[grid](*args, **meta)
            return launch

    kernel = triton_linear._gemv_kernel
    monkeypatch.setattr(triton_linear, "_gemv_kernel", Recorded())
    tuning = {(rows, cols, True): (2, True), (rows, cols, False): (4, True)}
    monkeypatch.setattr(triton_linear, "PHASE_GEMV_TUNING", tuning)
    assert torch.equal(triton_linear._gemv(x, weight, None), plain)
    assert torch.equal(triton_linear._gemv(x, dense, None), plain)
    assert launched == [((-(-rows // 2),), True), ((-(-rows // 4),), True)]


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize(("sources", "cols"), [([4096, 1024, 1024], 4096), ([14336, 14336], 4096), ([4096], 14336),
                                               ([128256], 4096)])
def test_ecf_gemv_at_llama_8b_shapes(sources: list[int], cols: int) -> None:
    """qkv, gate_up, down_proj and an LM-head-sized weight (16-, 8- and 4-row tiles), random N(0, 0.02)
    weights with their natural escapes, each fused prologue too."""
    from gpu_backend.kernels import triton_linear

    gen = torch.Generator(device="cuda").manual_seed(cols + len(sources))
    weight = CompressedWeight.stack([
        CompressedWeight.from_dense((0.02 * torch.randn(rows, cols, device="cuda", generator=gen)).to(torch.bfloat16))
        for rows in sources])
    assert weight.num_escapes > 0
    dense = weight.decode()
    x = torch.randn(1, cols, device="cuda", generator=gen).to(torch.bfloat16)
    assert torch.equal(triton_linear.linear(x, weight), triton_linear.linear(x, dense))
    norm_weight = torch.ones(cols, device="cuda", dtype=torch.bfloat16)
    for residual in (None, x.flip(-1)):
        y, r = triton_linear.rms_norm_linear(x, residual, norm_weight, 1e-5, weight)
        y_dense, r_dense = triton_linear.rms_norm_linear(x, residual, norm_weight, 1e-5, dense)
        assert torch.equal(y, y_dense) and torch.equal(r, r_dense)
    gate_up = torch.randn(1, 2 * cols, device="cuda", generator=gen).to(torch.bfloat16)
    assert torch.equal(triton_linear.silu_and_mul_linear(gate_up, weight),
                       triton_linear.silu_and_mul_linear(gate_up, dense))
    several = torch.randn(5, cols, device="cuda", generator=gen).to(torch.bfloat16)
    assert torch.equal(triton_linear.linear(several, weight), triton_linear.linear(several, dense))


@pytest.mark.gpu
@NEEDS_CUDA
def test_unfused_ecf_decode_runs_the_bf16_kernels_on_the_scratch_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """FUSED_ECF_DECODE = False: one row decodes into scratch, then the bf16 GEMV (and its fused
    prologues) runs on it: the bf16 path's output by construction."""
    from gpu_backend.kernels import triton_linear

    monkeypatch.setattr(triton_linear, "FUSED_ECF_DECODE", False)
    weight = _on("cuda", _compressed(40, 2100, 3, stacked=True))
    share_scratch([weight])
    dense = weight.decode()
    x = torch.randn(1, 2100, device="cuda").to(torch.bfloat16)
    norm_weight = torch.ones(2100, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(triton_linear.linear(x, weight), triton_linear.linear(x, dense))
    y, r = triton_linear.rms_norm_linear(x, x, norm_weight, 1e-5, weight)
    y_dense, r_dense = triton_linear.rms_norm_linear(x, x, norm_weight, 1e-5, dense)
    assert torch.equal(y, y_dense) and torch.equal(r, r_dense)
    gate_up = torch.randn(1, 4200, device="cuda").to(torch.bfloat16)
    assert torch.equal(triton_linear.silu_and_mul_linear(gate_up, weight), triton_linear.silu_and_mul_linear(gate_up, dense))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "cols"), SHAPES[:2])
@pytest.mark.parametrize("with_residual", [False, True])
def test_ecf_rms_norm_gemv_equals_bf16(device: str, rows: int, cols: int, with_residual: bool) -> None:
    from gpu_backend.kernels import triton_linear

    weight = _on(device, _compressed(rows, cols, rows, stacked=True))
    gen = torch.Generator().manual_seed(rows + with_residual)
    x = (3 * torch.randn(1, cols, generator=gen)).to(torch.bfloat16).to(device)
    residual = torch.randn(1, cols, generator=gen).to(torch.bfloat16).to(device) if with_residual else None
    norm_weight = (1 + 0.1 * torch.randn(cols, generator=gen)).to(torch.bfloat16).to(device)
    outputs = []
    for w in (weight, weight.decode()):
        new_residual = torch.empty_like(x) if with_residual else None
        y = triton_linear._gemv(x, w, None, triton_linear.RMS_NORM, residual, norm_weight, 1e-5, new_residual)
        outputs.append((y, new_residual))
    assert torch.equal(outputs[0][0], outputs[1][0])
    if with_residual:
        assert torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "cols"), SHAPES[:2])
def test_ecf_silu_mul_gemv_equals_bf16(device: str, rows: int, cols: int) -> None:
    from gpu_backend.kernels import triton_linear

    weight = _on(device, _compressed(rows, cols, cols, stacked=False))
    gen = torch.Generator().manual_seed(cols)
    gate_up = torch.randn(1, 2 * cols, generator=gen).to(torch.bfloat16).to(device)
    got = triton_linear._gemv(gate_up, weight, None, triton_linear.SILU_MUL)
    assert torch.equal(got, triton_linear._gemv(gate_up, weight.decode(), None, triton_linear.SILU_MUL))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "cols"), [(40, 300), (70, 515)])
@pytest.mark.parametrize("stacked", [False, True])
def test_decode_to_scratch_is_the_weight(device: str, rows: int, cols: int, stacked: bool) -> None:
    """The scratch decode is the twin's decode, which is the source tensor (stacked: both of them)."""
    from gpu_backend.kernels import triton_linear

    weight = _on(device, _compressed(rows, cols, rows * cols, stacked))
    expected = torch.cat([_weight_with_escapes(rows, cols, rows * cols)]
                         + ([(30 * _weight_with_escapes(rows, cols, rows * cols + 1).float()).to(torch.bfloat16)]
                            if stacked else []))
    decoded = triton_linear.decode_to_scratch(weight)
    assert torch.equal(decoded.cpu().view(torch.int16), expected.view(torch.int16))
    smaller = _on(device, _compressed(rows // 2, cols, rows, stacked=False))
    share_scratch([weight, smaller])  # one buffer, the size of the larger weight
    assert weight.scratch is smaller.scratch and weight.scratch.numel() == weight.shape.numel()
    weight.scratch.fill_(float("nan"))
    into = triton_linear.decode_to_scratch(weight)
    assert into.data_ptr() == weight.scratch.data_ptr()
    assert torch.equal(into.cpu().view(torch.int16), expected.view(torch.int16))
    assert torch.equal(weight.decode().cpu().view(torch.int16), expected.view(torch.int16))
    # several rows: the matmul on the scratch buffer is torch's on the decoded weight
    x = torch.randn(5, cols).to(torch.bfloat16).to(device)
    assert torch.equal(triton_linear.linear(x, weight), torch.nn.functional.linear(x, expected.to(device)))


# K tiles narrower than the layers' (planes.tiles_at_most, as gemm_probe.py's "tile128" does): a GEMV or
# scratch-decode step takes several (ecf_decode.tiles_a_step). 32 tiles of 128 columns, 8 a step; 32 of 16, all
# in one step; both with a padded last tile, escapes and two windows
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("tile", "cols", "step"), [(128, 4060, 8), (16, 500, 32)])
@pytest.mark.parametrize("prefetch", [False, True])
def test_several_tiles_a_step(device: str, tile: int, cols: int, step: int, prefetch: bool,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_backend.kernels import ecf_decode, triton_linear
    from gpu_backend.weights import planes

    monkeypatch.setattr(triton_linear, "GEMV_PREFETCH", prefetch)
    with planes.tiles_at_most(tile):
        assert ecf_decode.tiles_a_step(cols) == step and planes.tile_cols(cols) == tile
        weight = _on(device, _compressed(9, cols, 3, stacked=True))
        dense = weight.decode()
        x = torch.randn(1, cols, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(device)
        got = triton_linear._gemv(x, weight, None)
        assert torch.equal(got, triton_linear._gemv(x, dense, None))
        torch.testing.assert_close(got.float(), reference.linear(x, weight, None).float(), atol=2e-2, rtol=2e-2)
        assert torch.equal(triton_linear.decode_to_scratch(weight).view(torch.int16), dense.view(torch.int16))


def test_tiles_a_step() -> None:
    from gpu_backend.kernels import ecf_decode

    assert ecf_decode.tiles_a_step(4096) == ecf_decode.tiles_a_step(14336) == 1  # 1,024-column tiles: one a step
    assert ecf_decode.tiles_a_step(300) == 1  # 19 tiles of 16: no power of two above 1 divides them
    assert ecf_decode.tiles_a_step(1536) == 1  # 3 tiles of 512


@pytest.mark.skipif(INTERPRETING, reason="already inside the interpreter run")
@pytest.mark.timeout(450)  # the interpreter takes about 4 minutes over this file, past the suite's 180 s
def test_ecf_interpreter() -> None:
    """Run this file's CPU variants with TRITON_INTERPRET=1 set before triton is imported."""
    run_cpu_variants(__file__, timeout_s=420)
