"""Random compressed weights (load_format="dummy", compressed_weights="kernel"): the linear layers are built
without dense weights and filled with N(0, 0.02) values made and ECF-coded one checkpoint tensor at a time on
the engine's device, so a model larger than the device in bf16 loads; the engine generates with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_backend import LLM, SamplingParams
from gpu_backend.engine import model_runner
from gpu_backend.layers.linear import LinearBase, MergedColumnParallelLinear, QKVParallelLinear
from gpu_backend.weights.packed import CompressedWeight

OPTIONS = {"device": "cpu", "dtype": "bfloat16", "load_format": "dummy", "compressed_weights": "kernel",
           "skip_tokenizer_init": True, "enforce_eager": True, "num_kv_blocks": 32, "progress": False}
PROMPTS = [[5, 9, 17, 3], [40, 41, 42]]


def _linears(llm: LLM) -> list[LinearBase]:
    return [m for m in llm.engine.runner.model.modules() if isinstance(m, LinearBase)]


def _tokens(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def test_linear_layers_hold_only_codes_made_one_tensor_at_a_time(checkpoints: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    coded: list[tuple[tuple[int, ...], torch.device]] = []
    code = model_runner.code_dense

    def recording(tensor: torch.Tensor) -> CompressedWeight:
        coded.append((tuple(tensor.shape), tensor.device))
        return code(tensor)

    monkeypatch.setattr(model_runner, "code_dense", recording)
    llm = LLM(str(checkpoints["llama"]), **OPTIONS)
    linears = _linears(llm)
    assert linears and all(layer.compressed is not None and layer.weight.numel() == 0 for layer in linears)
    # q, k, v and gate, up are coded apart, each with its exponent window, as a checkpoint's tensors are
    for layer in linears:
        expected = 3 if isinstance(layer, QKVParallelLinear) else 2 if isinstance(layer, MergedColumnParallelLinear) else 1
        assert len(layer.compressed.source_rows) == expected
    assert len(coded) == sum(len(layer.compressed.source_rows) for layer in linears)
    largest_tensor = max(rows * cols for (rows, cols), _ in coded)
    smallest_layer = min(sum(layer.compressed.shape.numel() for layer in linears if layer in block.modules())
                         for block in llm.engine.runner.model.stage_layers())
    assert largest_tensor < smallest_layer / 2  # never a whole layer's weights dense at once
    assert all(device.type == "cpu" for _, device in coded)  # made where the engine runs


def test_codes_decode_to_finite_bfloat16_of_the_expected_spread(checkpoints: dict[str, Path]) -> None:
    llm = LLM(str(checkpoints["llama"]), **OPTIONS)
    weights = [layer.compressed.decode() for layer in _linears(llm)]
    assert all(w.dtype == torch.bfloat16 for w in weights)
    values = torch.cat([w.float().reshape(-1) for w in weights])
    assert torch.isfinite(values).all()
    assert abs(values.mean().item()) < 1e-3
    assert 0.0195 < values.std().item() < 0.0205
    assert sum(layer.compressed.num_escapes for layer in _linears(llm)) > 0  # the tails escape, as real weights do
    coded_bytes = sum(layer.compressed.nbytes for layer in _linears(llm))
    assert 0.75 < coded_bytes / (2 * values.numel()) < 0.8


def test_engine_generates_the_tokens_of_the_same_weights_held_dense(checkpoints: dict[str, Path]) -> None:
    llm = LLM(str(checkpoints["llama"]), **OPTIONS)
    tokens = _tokens(llm, PROMPTS)
    assert [len(t) for t in tokens] == [6, 6]
    again = LLM(str(checkpoints["llama"]), **OPTIONS)
    assert _tokens(again, PROMPTS) == tokens  # seeded: the same random weights every load
    for layer in _linears(again):  # the decoded weights as dense parameters: the plain bf16 path
        layer.weight.data, layer.compressed = layer.compressed.decode(), None
    assert _tokens(again, PROMPTS) == tokens


def test_a_dtype_without_an_ecf_code_is_refused(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="dtype='bfloat16'"):
        LLM(str(checkpoints["llama"]), **{**OPTIONS, "dtype": "float16"})


def test_plain_dummy_weights_stay_dense(checkpoints: dict[str, Path]) -> None:
    llm = LLM(str(checkpoints["llama"]), **{**OPTIONS, "compressed_weights": "decode_at_load"})
    assert all(layer.compressed is None and layer.weight.numel() > 0 for layer in _linears(llm))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_a_gpu_codes_are_made_there_and_kernel_mode_matches_them_dense(checkpoints: dict[str, Path]) -> None:
    options = {**OPTIONS, "device": "cuda", "enforce_eager": False}
    llm = LLM(str(checkpoints["llama"]), **options)
    assert llm.engine.runner.graphs is not None
    assert all(layer.compressed.device.type == "cuda" and layer.compressed.scratch is not None for layer in _linears(llm))
    tokens = [_tokens(llm, PROMPTS[:1]), _tokens(llm, PROMPTS)]  # the ECF GEMV; decode-to-scratch
    dense = LLM(str(checkpoints["llama"]), **options)
    for layer in _linears(dense):
        layer.weight.data, layer.compressed = layer.compressed.decode(), None
    dense.engine.runner.graphs = None  # captured on the compressed weights: run the dense ones eagerly
    assert [_tokens(dense, PROMPTS[:1]), _tokens(dense, PROMPTS)] == tokens
