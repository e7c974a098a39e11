"""encode_on_device gives encode's parts bit for bit: on every tensor of every test checkpoint and of the
shipped trained ones, on edge values (all bfloat16 patterns, ties in the exponent counts, exact zeros, fewer
than 15 exponents), and on a GPU when there is one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressed_checkpoints import source_tensors

from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.weights import compress_tensors
from gpu_backend.weights.codec import Parts, decode_parts, encode, encode_on_device

SHIPPED = ("@cf/edgewise/tiny-shakespeare", "@cf/sentence-transformers/all-minilm-l6-v2")


def assert_same_parts(expected: Parts, actual: Parts) -> None:
    assert sorted(actual) == sorted(expected)
    for part, tensor in expected.items():
        got = actual[part].cpu()
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, part
        assert torch.equal(got, tensor), part


def codable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if t.dtype in (torch.bfloat16, torch.float32) and t.dim() >= 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_tensor_of_every_test_checkpoint(checkpoints: dict[str, Path], dtype: torch.dtype) -> None:
    count = 0
    for folder in checkpoints.values():
        for name, tensor in codable(source_tensors(folder, dtype)).items():
            assert_same_parts(encode(tensor), encode_on_device(tensor))
            count += 1
    assert count > 50


@pytest.mark.parametrize("name", SHIPPED)
def test_every_tensor_of_the_shipped_trained_checkpoints(name: str) -> None:
    tensors = codable(source_tensors(builtin_model_path(name), torch.bfloat16))
    assert tensors
    for tensor in tensors.values():
        assert_same_parts(encode(tensor), encode_on_device(tensor))


def edge_tensors() -> dict[str, torch.Tensor]:
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    # 20 exponents each used exactly 3 times: the table is decided by the tie-break alone
    tied = torch.tensor([2.0 ** e for e in range(-10, 10)] * 3, dtype=torch.bfloat16).reshape(6, 10)
    zeros = torch.zeros(9, 7, dtype=torch.bfloat16)
    zeros[4, 3] = 1.5  # two exponents, 0 the most common: the padded zero entries must not shadow it
    few = torch.tensor([[0.5, -0.5, 1.0], [2.0, 0.0, -0.0]], dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    odd = (0.02 * torch.randn(33, 17, generator=generator)).to(torch.bfloat16)
    odd.view(-1)[::41] = torch.tensor(float("nan"), dtype=torch.bfloat16)
    bits32 = torch.randint(-2**31, 2**31 - 1, (37, 29), dtype=torch.int32, generator=generator).view(torch.float32)
    return {"every_bf16_pattern": every, "tied_counts": tied, "mostly_zeros": zeros, "few_exponents": few,
            "odd_cols_with_nans": odd, "random_fp32_bits": bits32, "one_row": odd[:1], "vector": odd[0],
            "three_dims": odd[:32].reshape(4, 8, 17)}


@pytest.mark.parametrize("name", list(edge_tensors()))
def test_edge_values(name: str) -> None:
    tensor = edge_tensors()[name]
    parts = encode_on_device(tensor)
    assert_same_parts(encode(tensor), parts)
    bits = torch.int16 if tensor.dtype == torch.bfloat16 else torch.int32
    assert torch.equal(decode_parts(parts, tensor.dtype, tuple(tensor.shape)).view(bits), tensor.view(bits))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(edge_tensors()))
def test_on_a_gpu_the_parts_stay_there_and_equal_the_cpu_ones(name: str) -> None:
    tensor = edge_tensors()[name]
    parts = encode_on_device(tensor.cuda())
    assert all(part.is_cuda for part in parts.values())
    assert_same_parts(encode(tensor), parts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_file_of_gpu_tensors_is_byte_for_byte_the_file_of_their_host_copies(tmp_path: Path) -> None:
    tensors = [("w.weight", (0.02 * torch.randn(256, 512)).to(torch.bfloat16)), ("n.weight", torch.ones(512)),
               ("e.weight", edge_tensors()["every_bf16_pattern"]),
               ("o.weight", edge_tensors()["odd_cols_with_nans"])]
    compress_tensors(tensors, tmp_path / "host.safetensors")
    compress_tensors([(name, tensor.cuda()) for name, tensor in tensors], tmp_path / "gpu.safetensors")
    assert (tmp_path / "gpu.safetensors").read_bytes() == (tmp_path / "host.safetensors").read_bytes()
