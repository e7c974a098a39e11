"""ECF weights kept coded in GPU memory (compressed_weights "auto", the default, and "kernel"): the model
generates the original's tokens with CUDA graphs on, through the batch-1 GEMV that decodes its tiles
and the decode-to-scratch path of batches, and holds its linear weights in about 0.75 of the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressed_checkpoints import compressed_shakespeare

from gpu_backend import LLM, SamplingParams
from gpu_backend.layers.linear import LinearBase
from gpu_backend.weights.packed import held_weight_bytes

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]
OPTIONS = {"device": "cuda", "dtype": "bfloat16", "num_kv_blocks": 64, "progress": False}
PROMPTS = ["ROMEO:", "KING HENRY:", "JULIET:"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return compressed_shakespeare(tmp_path_factory.mktemp("ecf"))


def _linears(llm: LLM) -> list[LinearBase]:
    return [m for m in llm.engine.runner.model.modules() if isinstance(m, LinearBase)]


def _tokens(llm: LLM, prompts: list[str], seed: int | None = None) -> list[list[int]]:
    params = SamplingParams(temperature=0.0 if seed is None else 0.8, seed=seed, max_tokens=40, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def test_kernel_mode_generates_the_original_tokens_with_cuda_graphs(folders: tuple[Path, Path]) -> None:
    """By default, against the original as it runs by default (the dense GEMV "phases", which sums as the
    ECF GEMV does)."""
    from gpu_backend.kernels import triton_linear

    assert triton_linear.DENSE_GEMV == "phases"
    src, ecf = folders
    original = LLM(str(src), **OPTIONS)
    compressed = LLM(str(ecf), **OPTIONS)
    assert original.engine.runner.graphs is not None and compressed.engine.runner.graphs is not None
    held = [layer.compressed for layer in _linears(compressed)]
    assert all(weight is not None for weight in held) and all(layer.weight.numel() == 0 for layer in _linears(compressed))
    assert len({id(weight.scratch) for weight in held}) == 1  # one scratch buffer, the largest weight's size
    assert held[0].scratch.numel() == max(weight.shape.numel() for weight in held)
    for prompts in (PROMPTS[:1], PROMPTS):  # batch 1: the ECF GEMV; batch 3: decode-to-scratch + matmul
        assert _tokens(compressed, prompts) == _tokens(original, prompts)
    assert _tokens(compressed, PROMPTS, seed=7) == _tokens(original, PROMPTS, seed=7)


def test_linear_weights_take_three_quarters_of_the_memory(folders: tuple[Path, Path]) -> None:
    src, ecf = folders
    original, compressed = LLM(str(src), **OPTIONS), LLM(str(ecf), compressed_weights="kernel", **OPTIONS)
    dense_bytes = sum(layer.weight.nbytes for layer in _linears(original))
    coded_bytes = sum(layer.compressed.nbytes for layer in _linears(compressed))
    assert 0.75 < coded_bytes / dense_bytes < 0.78  # 12 bits a weight, a byte a row, 16 bytes an escaped group
    # everything else (the tied embedding, the norms) stays as it is
    others = held_weight_bytes(original.engine.runner.model) - dense_bytes
    assert held_weight_bytes(compressed.engine.runner.model) == others + coded_bytes


def test_decode_at_load_holds_dense_weights(folders: tuple[Path, Path]) -> None:
    src, ecf = folders
    dense = LLM(str(ecf), compressed_weights="decode_at_load", **OPTIONS)
    assert all(layer.compressed is None and layer.weight.numel() > 0 for layer in _linears(dense))
    assert _tokens(dense, PROMPTS) == _tokens(LLM(str(src), **OPTIONS), PROMPTS)


def test_batches_on_the_phase_gemm_generate_the_original_tokens(folders: tuple[Path, Path], monkeypatch) -> None:
    """Under BATCH_GEMM "phases" both models run batches on triton_gemm (here down_proj: the other weights'
    K tiles are too narrow for it), the compressed one decoding in registers: still the original's tokens."""
    from gpu_backend.kernels import triton_gemm, triton_linear

    monkeypatch.setattr(triton_linear, "BATCH_GEMM", "phases")
    coded_calls = []
    gemm = triton_gemm.gemm

    def counting(x, weight, *args, **kwargs):
        coded_calls.append(not isinstance(weight, torch.Tensor))
        return gemm(x, weight, *args, **kwargs)

    monkeypatch.setattr(triton_gemm, "gemm", counting)
    src, ecf = folders
    original, compressed = LLM(str(src), **OPTIONS), LLM(str(ecf), **OPTIONS)
    assert _tokens(compressed, PROMPTS) == _tokens(original, PROMPTS)
    assert _tokens(compressed, PROMPTS, seed=7) == _tokens(original, PROMPTS, seed=7)
    assert True in coded_calls and False in coded_calls


def test_narrow_k_tiles_generate_the_original_tokens(folders: tuple[Path, Path], monkeypatch) -> None:
    """Every weight in K tiles of 128 columns or fewer (planes.tiles_at_most, as compressed_decode.py's
    -gemm128 variants run): the planes made in them, the GEMVs several tiles a step (down_proj: 4 tiles of 128,
    4 a step), batches on the phase GEMM: still the original's tokens, run the same way."""
    from gpu_backend.kernels import ecf_decode, triton_linear
    from gpu_backend.weights import planes

    monkeypatch.setattr(triton_linear, "BATCH_GEMM", "phases")
    with planes.tiles_at_most(128):
        assert planes.tile_cols(512) == 128 and ecf_decode.tiles_a_step(512) == 4
        src, ecf = folders
        original, compressed = LLM(str(src), **OPTIONS), LLM(str(ecf), **OPTIONS)
        for prompts in (PROMPTS[:1], PROMPTS):
            assert _tokens(compressed, prompts) == _tokens(original, prompts)
        assert _tokens(compressed, PROMPTS, seed=7) == _tokens(original, PROMPTS, seed=7)
