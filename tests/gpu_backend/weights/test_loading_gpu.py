"""Compressed weights on an NVIDIA GPU: the decoder gives the CPU's bits there, and a compressed
checkpoint loaded on the GPU (decoded there) generates what the original does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressed_checkpoints import compress

from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.weights.codec import decode_parts, encode

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]
BITS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (333, 1025), (4, 3, 5)])
def test_decode_on_the_gpu_gives_the_cpu_bits(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    tensor = (0.02 * torch.randn(shape, generator=generator)).to(dtype)
    rare = tensor.view(-1)[::7]  # 40 exponents far below the weights', each too rare for the table: escapes
    rare.copy_(2.0 ** -(60 + torch.arange(rare.numel()) % 40))
    parts = encode(tensor)
    on_gpu = decode_parts({k: v.cuda() for k, v in parts.items()}, dtype, shape)
    assert on_gpu.is_cuda
    assert torch.equal(on_gpu.cpu().view(BITS[dtype]), decode_parts(parts, dtype, shape).view(BITS[dtype]))
    assert torch.equal(on_gpu.cpu().view(BITS[dtype]), tensor.view(BITS[dtype]))


def test_compressed_tiny_shakespeare_on_the_gpu_writes_the_same_play(tmp_path: Path) -> None:
    src = builtin_model_path("@cf/edgewise/tiny-shakespeare")
    compress(src, tmp_path / "out")
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    options = {"device": "cuda", "dtype": "bfloat16", "num_kv_blocks": 64, "progress": False}
    expected = LLM(str(src), **options).generate(["ROMEO:", "KING HENRY:"], params)
    got = LLM(str(tmp_path / "out"), **options).generate(["ROMEO:", "KING HENRY:"], params)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
