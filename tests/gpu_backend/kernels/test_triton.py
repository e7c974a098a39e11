"""The Triton kernels against their torch twins on the same inputs.

Every test runs on CUDA (marked gpu, skipped without a GPU) and on CPU under Triton's interpreter.
The interpreter must be switched on before triton is imported, so the CPU variants run only in
the subprocess that test_triton_interpreter starts with TRITON_INTERPRET=1 (small sizes, fp32
and fp16: the interpreter computes bf16 through numpy without proper rounding).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
import torch
from triton_interpreter import INTERPRETING, run_cpu_variants

from gpu_backend.kernels import Kernels, get_kernels, reference

HAS_TRITON = importlib.util.find_spec("triton") is not None

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEVICES = [
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(INTERPRETING or not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not INTERPRETING, reason="CPU runs only in test_triton_interpreter's subprocess"
        ),
    ),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}

# (q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size), small enough to interpret
ATTENTION_CASES = [
    pytest.param([1, 50, 1, 7], [33, 50, 129, 60], 8, 4, 64, 16, id="mixed-gqa2"),
    pytest.param([5, 1, 20, 0], [100, 1, 45, 0], 16, 2, 128, 8, id="gqa8-chunks-padded"),
    pytest.param([9, 3], [9, 70], 14, 2, 80, 32, id="group7-head-dim-80"),
]
# run on CUDA only: long prompts and contexts that need many tiles and splits
CUDA_ATTENTION_CASES = [
    pytest.param([1000, 1, 300], [1000, 4100, 2300], 32, 8, 128, 16, id="llama8b-mixed"),
    pytest.param([777], [777], 8, 8, 64, 16, id="mha-prompt"),
]


@pytest.fixture(scope="module")
def triton_kernels() -> Kernels:
    return get_kernels("triton")


@pytest.fixture(
    params=[
        pytest.param((True, None), id="fused-reduce"),
        pytest.param((True, 1024), id="fused-reduce-small-steps"),
        pytest.param((False, None), id="reduce-kernel"),
    ]
)
def split_reduce(request, monkeypatch) -> ModuleType:
    """triton_attention with decode splits merged in the decode kernel or by the separate reduce
    kernel. Small steps merge 1, 2 or 4 splits a step, some steps part empty (3 live splits of 4)."""
    triton_attention = importlib.import_module("gpu_backend.kernels.triton_attention")
    fused, merge_tile_elements = request.param
    monkeypatch.setattr(triton_attention, "FUSED_SPLIT_REDUCE", fused)
    if merge_tile_elements is not None:
        monkeypatch.setattr(triton_attention, "MERGE_TILE_ELEMENTS", merge_tile_elements)
    return triton_attention


def _skip_unsupported(device: str, dtype: torch.dtype) -> None:
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the interpreter does not round bf16 like a GPU does")


def _strided(x: torch.Tensor) -> torch.Tensor:
    """x as a non-contiguous view, as q/k/v are slices of one qkv projection in the model."""
    wide = torch.cat([x, torch.full_like(x, float("nan"))], dim=1)
    return wide[:, : x.shape[1]]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not actual.isnan().any()
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL[dtype], rtol=ATOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "q_lens,seq_lens,num_q_heads,num_kv_heads,head_dim,block_size",
    ATTENTION_CASES
    + [
        pytest.param(
            *case.values, marks=pytest.mark.skipif(INTERPRETING, reason="too big to interpret"), id=case.id
        )
        for case in CUDA_ATTENTION_CASES
    ],
)
def test_paged_attention(
    triton_kernels,
    make_paged_batch,
    device,
    dtype,
    q_lens,
    seq_lens,
    num_q_heads,
    num_kv_heads,
    head_dim,
    block_size,
) -> None:
    _skip_unsupported(device, dtype)
    b = make_paged_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, device)
    args = (
        b.k_cache,
        b.v_cache,
        b.query_start_loc,
        b.seq_lens,
        b.block_tables,
        b.max_query_len,
        b.max_seq_len,
        b.scale,
    )
    out = triton_kernels.paged_attention(_strided(b.query), *args)
    _assert_close(out, reference.paged_attention(b.query, *args), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "q_lens,seq_lens,num_decodes",
    [
        pytest.param([1, 1, 1, 20, 7], [40, 1, 300, 45, 7], 3, id="decodes-then-prompts"),
        pytest.param([1, 1], [130, 9], 2, id="all-decodes"),
        pytest.param([1, 1, 0, 5], [33, 64, 0, 70], 1, id="some-ones-after-the-prefix"),
    ],
)
def test_paged_attention_serves_leading_decodes_with_the_decode_kernel(
    triton_kernels, split_reduce, make_paged_batch, device, dtype, q_lens, seq_lens, num_decodes
) -> None:
    """num_decodes only changes which kernel serves the first rows, never the result."""
    _skip_unsupported(device, dtype)
    b = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, dtype, device, seed=7)
    args = (b.k_cache, b.v_cache, b.query_start_loc, b.seq_lens, b.block_tables, b.max_query_len,
            b.max_seq_len, b.scale)
    out = triton_kernels.paged_attention(_strided(b.query), *args, num_decodes)
    _assert_close(out, reference.paged_attention(b.query, *args), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "seq_lens,num_q_heads,num_kv_heads",
    [
        pytest.param([1, 0, 300, 16, 0, 47], 8, 2, id="short-padded"),
        pytest.param([700], 4, 1, id="one-long-split"),
        pytest.param(
            [5000, 130, 0, 2049],
            32,
            8,
            marks=pytest.mark.skipif(INTERPRETING, reason="too big"),
            id="llama8b",
        ),
    ],
)
def test_decode_attention(
    triton_kernels, split_reduce, make_paged_batch, device, dtype, seq_lens, num_q_heads, num_kv_heads
) -> None:
    _skip_unsupported(device, dtype)
    b = make_paged_batch(
        [1] * len(seq_lens), seq_lens, num_q_heads, num_kv_heads, 64, 16, dtype, device, seed=1
    )
    args = (b.k_cache, b.v_cache, b.seq_lens, b.block_tables, b.scale)
    out = triton_kernels.decode_attention(_strided(b.query), *args)
    _assert_close(out, reference.decode_attention(b.query, *args), dtype)
    padded = [i for i, n in enumerate(seq_lens) if n == 0]
    assert torch.equal(out[padded], torch.zeros_like(out[padded]))


# (seq_lens, num_q_heads, num_kv_heads, head_dim): at most two (sequence, kv head) pairs, so even
# the interpreter's pretend 4-SM GPU splits every context (some splits empty, some rows padded)
SPLIT_DECODE_CASES = [
    pytest.param([700, 0], 2, 2, 80, id="gqa1-head-dim-80-padded"),
    pytest.param([0, 1500], 4, 1, 128, id="gqa4-head-dim-128-padded"),
    pytest.param([300, 1000], 8, 1, 64, id="gqa8-head-dim-64-empty-splits"),
    pytest.param([900], 12, 2, 80, id="gqa6-head-dim-80"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_lens,num_q_heads,num_kv_heads,head_dim", SPLIT_DECODE_CASES)
def test_decode_attention_merges_splits_launch_after_launch(
    triton_kernels, split_reduce, make_paged_batch, device, dtype, seq_lens, num_q_heads, num_kv_heads, head_dim
) -> None:
    """Split contexts merge right on every launch: the fused reduce leaves its counters at zero."""
    _skip_unsupported(device, dtype)
    b = make_paged_batch(
        [1] * len(seq_lens), seq_lens, num_q_heads, num_kv_heads, head_dim, 16, dtype, device, seed=9
    )
    max_context = b.block_tables.shape[1] * b.k_cache.shape[1]
    assert split_reduce._num_splits(len(seq_lens), num_kv_heads, max_context, b.query.device) > 1
    args = (b.k_cache, b.v_cache, b.seq_lens, b.block_tables, b.scale)
    expected = reference.decode_attention(b.query, *args)
    first = triton_kernels.decode_attention(_strided(b.query), *args)
    _assert_close(first, expected, dtype)
    second = torch.full_like(b.query, float("nan"))
    triton_kernels.decode_attention(_strided(b.query), *args, out=second)
    assert torch.equal(second, first)
    padded = [i for i, n in enumerate(seq_lens) if n == 0]
    assert torch.equal(first[padded], torch.zeros_like(first[padded]))
    if split_reduce.FUSED_SPLIT_REDUCE:
        assert not split_reduce._split_counters[b.query.device].any()


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING or not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_attention_replays_in_cuda_graph(triton_kernels, split_reduce, make_paged_batch) -> None:
    """No host sync inside: a captured graph follows seq_lens changed in place between replays."""
    b = make_paged_batch([1] * 4, [900, 33, 1, 400], 32, 8, 128, 16, torch.bfloat16, "cuda", seed=2)
    args = (b.query, b.k_cache, b.v_cache, b.seq_lens, b.block_tables, b.scale)
    triton_kernels.decode_attention(*args)  # compile (and allocate the split counters) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_kernels.decode_attention(*args)
    for seq_lens in ([17, 0, 1, 399], [900, 33, 0, 2]):  # the second replay needs the counters reset
        b.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        graph.replay()
        _assert_close(out, reference.decode_attention(*args), torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_cache(triton_kernels, device, dtype) -> None:
    _skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(3)
    k_cache = torch.randn(7, 16, 2, 80, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(7, 16, 2, 80, generator=gen).to(dtype).to(device)
    key = torch.randn(9, 2, 80, generator=gen).to(dtype).to(device)
    value = torch.randn(9, 2, 80, generator=gen).to(dtype).to(device)
    slots = torch.randperm(7 * 16, generator=gen)[:9]
    slots[[2, 5]] = -1
    slots = slots.to(device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.store_kv_cache(key, value, k_ref, v_ref, slots)
    triton_kernels.store_kv_cache(_strided(key), _strided(value), k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 96), (3, 5, 64), (2, 4096)])
def test_rms_norms(triton_kernels, device, dtype, shape) -> None:
    _skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(shape, generator=gen)).to(dtype).to(device)
    residual = torch.randn(shape, generator=gen).to(dtype).to(device)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(dtype).to(device)
    _assert_close(triton_kernels.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6), dtype)
    y, new_residual = triton_kernels.fused_add_rms_norm(x, residual, weight, 1e-5)
    y_ref, new_residual_ref = reference.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(new_residual, new_residual_ref)
    _assert_close(y, y_ref, dtype)


def _rope_cache(head_dim: int, positions: int) -> torch.Tensor:
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(positions).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_apply_rotary(triton_kernels, device, dtype, head_dim) -> None:
    _skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(5)
    cos_sin_cache = _rope_cache(head_dim, 300).to(device)
    positions = torch.randint(0, 300, (11,), generator=gen).to(device)
    query = torch.randn(11, 12, head_dim, generator=gen).to(dtype).to(device)
    key = torch.randn(11, 3, head_dim, generator=gen).to(dtype).to(device)
    q_out, k_out = triton_kernels.apply_rotary(_strided(query), _strided(key), positions, cos_sin_cache)
    q_ref, k_ref = reference.apply_rotary(query, key, positions, cos_sin_cache)
    _assert_close(q_out, q_ref, dtype)
    _assert_close(k_out, k_ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_rotary_store_kv(triton_kernels, device, dtype, head_dim) -> None:
    """The fused kernel equals apply_rotary then store_kv_cache, bit for bit, padding slots included."""
    _skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(8)
    cos_sin_cache = _rope_cache(head_dim, 200).to(device)
    positions = torch.randint(0, 200, (9,), generator=gen).to(device)
    query = torch.randn(9, 6, head_dim, generator=gen).to(dtype).to(device)
    key = torch.randn(9, 3, head_dim, generator=gen).to(dtype).to(device)
    value = torch.randn(9, 3, head_dim, generator=gen).to(dtype).to(device)
    k_cache = torch.randn(5, 8, 3, head_dim, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(5, 8, 3, head_dim, generator=gen).to(dtype).to(device)
    slots = torch.randperm(5 * 8, generator=gen)[:9]
    slots[[1, 6]] = -1
    slots = slots.to(device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_ref = reference.rotary_store_kv(query, key, value, positions, cos_sin_cache, k_ref, v_ref, slots)
    q_rot, k_rot = triton_kernels.apply_rotary(query, key, positions, cos_sin_cache)
    k_sep, v_sep = k_cache.clone(), v_cache.clone()
    triton_kernels.store_kv_cache(k_rot, value, k_sep, v_sep, slots)
    q_out = triton_kernels.rotary_store_kv(_strided(query), _strided(key), _strided(value), positions,
                                           cos_sin_cache, k_cache, v_cache, slots)
    assert torch.equal(q_out, q_rot) and torch.equal(k_cache, k_sep) and torch.equal(v_cache, v_sep)
    _assert_close(q_out, q_ref, dtype)
    _assert_close(k_cache, k_ref, dtype)
    assert torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter_size", [72, 3000])
def test_silu_and_mul(triton_kernels, device, dtype, inter_size) -> None:
    _skip_unsupported(device, dtype)
    x = torch.randn(6, 2 * inter_size, generator=torch.Generator().manual_seed(6)).to(dtype).to(device)
    _assert_close(triton_kernels.silu_and_mul(x), reference.silu_and_mul(x), dtype)


@pytest.mark.skipif(INTERPRETING, reason="already inside the interpreter run")
def test_triton_interpreter() -> None:
    """Run this file's CPU variants with TRITON_INTERPRET=1 set before triton is imported."""
    run_cpu_variants(__file__, timeout_s=120)
