"""The Triton argmax against torch.argmax(logits.float(), dim=-1): the exact index, ties and all.

As in test_triton.py, every test runs on CUDA (marked gpu, skipped without a GPU) and on CPU under
Triton's interpreter, in the subprocess that test_argmax_interpreter starts with TRITON_INTERPRET=1
(bf16 included: argmax only widens it to float32, which the interpreter does exactly).
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

from gpu_backend.kernels import get_kernels, reference
from gpu_backend.layers.sampler import Sampler, SamplingBatch

pytestmark = NEEDS_TRITON
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VOCAB_SIZES = [1, 7, 4095, 4096, 4097, 32000, 128256, 151936]  # Llama-2, Llama-3, Qwen2 vocabularies
CHUNK = 2048  # triton_ops.ARGMAX_CHUNK, not imported so that this module imports without triton


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return get_kernels("triton").argmax(logits)


def _assert_matches_torch(logits: torch.Tensor) -> None:
    expected = torch.argmax(logits.float(), dim=-1)
    got = _argmax(logits)
    assert got.dtype == torch.int64 and got.device == logits.device
    assert torch.equal(got, expected)
    assert torch.equal(reference.argmax(logits), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab_size", VOCAB_SIZES)
def test_argmax_equals_torch(device: str, dtype: torch.dtype, vocab_size: int) -> None:
    """Random logits; bf16/fp16 rows of a large vocab hold repeated maxima, so ties are exercised."""
    gen = torch.Generator().manual_seed(vocab_size)
    logits = (4 * torch.randn(3, vocab_size, generator=gen)).to(dtype).to(device)
    _assert_matches_torch(logits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_first_of_tied_maxima_wins_across_chunks(device: str, dtype: torch.dtype) -> None:
    vocab_size = 16 * CHUNK + 500
    ties = [
        [5, 30_000],  # far apart
        [CHUNK - 1, CHUNK],  # either side of a chunk boundary
        [33_000, 3 * CHUNK + 7, 20_000],  # listed out of order
        [10, 11, 12 * CHUNK],  # two in one chunk, one in another
        [vocab_size - 1, vocab_size - 2],  # the last chunk, which is partial
    ]
    logits = torch.randn(len(ties), vocab_size, generator=torch.Generator().manual_seed(1)).clamp(-3, 3)
    for row, cols in enumerate(ties):
        logits[row, cols] = 7.5  # exact in every dtype
    logits = logits.to(dtype).to(device)
    assert _argmax(logits).tolist() == [min(cols) for cols in ties]
    _assert_matches_torch(logits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_rows_nan_and_signed_zeros(device: str, dtype: torch.dtype) -> None:
    """-inf everywhere gives 0, -0.0 ties with 0.0, and a row with a NaN gives its first NaN (as torch)."""
    vocab_size = 3 * CHUNK + 100
    logits = torch.full((6, vocab_size), float("-inf"))
    logits[1, -1] = -1e4  # the only finite logit, last
    logits[2] = -1.0
    logits[2, [CHUNK + 3, 2 * CHUNK]] = torch.tensor([-0.0, 0.0])
    logits[3] = torch.randn(vocab_size, generator=torch.Generator().manual_seed(2))
    logits[3, [2 * CHUNK + 9, CHUNK + 1]] = float("nan")
    logits[3, 0] = float("inf")
    logits[4, [50, 3 * CHUNK]] = -torch.tensor(float("nan"))  # the sign bit set, as 0 * inf gives on x86
    logits[5, 7] = float("inf")
    logits = logits.to(dtype).to(device)
    assert _argmax(logits).tolist() == [0, vocab_size - 1, CHUNK + 3, CHUNK + 1, 50, 7]
    _assert_matches_torch(logits)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_strided_rows_and_no_rows(device: str) -> None:
    wide = torch.randn(2, 3, 40_000, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(device)
    logits = wide[..., :32_000]  # rows 40_000 apart, as a slice of a padded vocab
    got = _argmax(logits)
    assert got.shape == (2, 3) and torch.equal(got, torch.argmax(logits.float(), dim=-1))
    assert _argmax(wide[:0, 0]).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_calls_keep_no_state(device: str) -> None:
    gen = torch.Generator().manual_seed(4)
    first = torch.randn(2, 32_000, generator=gen).to(torch.bfloat16).to(device)
    second = torch.randn(2, 32_000, generator=gen).to(torch.bfloat16).to(device)
    for logits in [first, second, first, second]:
        _assert_matches_torch(logits)
    assert torch.equal(_argmax(first), _argmax(first))


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_sampler_with_the_triton_argmax_equals_torch(device: str) -> None:
    logits = torch.randn(4, 128_256, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(device)
    logits[2, [9, 90_000]] = 30.0
    batch = SamplingBatch(None, None, None, None, [None] * 4, all_greedy=True)
    got = Sampler(argmax=get_kernels("triton").argmax)(logits, batch).token_ids
    assert torch.equal(got, Sampler()(logits, batch).token_ids)
    assert got[2] == 9


@pytest.mark.gpu
@NEEDS_CUDA
def test_argmax_replays_in_cuda_graph() -> None:
    """No host sync and no state between calls: a captured graph follows logits changed in place."""
    logits = torch.randn(2, 128_256, device="cuda", dtype=torch.bfloat16)
    _argmax(logits)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _argmax(logits)
    for seed in range(3):
        logits.copy_(torch.randn(2, 128_256, generator=torch.Generator().manual_seed(seed)).to(logits))
        logits[1, [60_000, 200]] = 40.0
        graph.replay()
        assert torch.equal(out, torch.argmax(logits.float(), dim=-1)) and out[1] == 200


@pytest.mark.skipif(INTERPRETING, reason="already inside the interpreter run")
def test_argmax_interpreter() -> None:
    """Run this file's CPU variants with TRITON_INTERPRET=1 set before triton is imported."""
    run_cpu_variants(__file__, timeout_s=150)
