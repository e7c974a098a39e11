"""Tests for gpu_backend.checkpoint_tensor: a checkpoint tensor read lazily, only the slice a rank asks for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gpu_backend.checkpoint_tensor import CheckpointTensor, materialize, narrow
from gpu_backend.errors import CheckpointError

CPU = torch.device("cpu")


@pytest.mark.parametrize("lazy", [False, True])
def test_replicated_linear_loads_the_whole_weight(tmp_path: Path, lazy: bool) -> None:
    from gpu_backend.layers.linear import LinearBase

    layer = LinearBase(3, 2, bias=True)
    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1.0, 2.0]), "wrong": torch.zeros(3, 3)}
    save_file(tensors, tmp_path / "t.safetensors")
    with safe_open(tmp_path / "t.safetensors", framework="pt", device="cpu") as handle:
        loaded = {name: CheckpointTensor(name, handle.get_slice(name), dtype=torch.float32, device=CPU) if lazy
                  else tensor for name, tensor in tensors.items()}
        layer.weight.weight_loader(layer.weight, loaded["w"], None)
        layer.bias.weight_loader(layer.bias, loaded["b"], None)
        with pytest.raises(CheckpointError, match=r"checkpoint shape \(3, 3\) does not fit \(2, 3\)"):
            layer.weight.weight_loader(layer.weight, loaded["wrong"], None)
    assert torch.equal(layer(torch.ones(1, 3)), torch.tensor([[4.0, 14.0]]))
    assert not lazy or loaded["wrong"].bytes_read == 0  # the shape is checked before anything is read


# -- lazy reads: CheckpointTensor ------------------------------------------------------------


@contextmanager
def opened(path: Path, name: str, dtype: torch.dtype = torch.float32) -> Iterator[CheckpointTensor]:
    with safe_open(path, framework="pt", device="cpu") as handle:
        yield CheckpointTensor(name, handle.get_slice(name), dtype=dtype, device=CPU)


def test_checkpoint_tensor_reads_only_the_narrowed_slice(tmp_path: Path) -> None:
    full = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"w": full, "ids": torch.arange(5)}, tmp_path / "t.safetensors")
    with opened(tmp_path / "t.safetensors", "w") as tensor:
        assert tensor.shape == (6, 10) and tensor.dtype == torch.float32 and tensor.is_floating_point()
        assert tensor.bytes_read == 0  # opening reads nothing
        rows, cols = tensor.narrow(0, 2, 3), tensor.narrow(1, 4, 5)
        assert tensor.bytes_read == (3 * 10 + 6 * 5) * 2  # bf16 bytes in the file
        assert rows.dtype == torch.float32 and torch.equal(rows, full[2:5].float())
        assert torch.equal(cols, full[:, 4:9].float())
        assert torch.equal(tensor.read(), full.float()) and tensor.bytes_read == (30 + 30 + 60) * 2
    with opened(tmp_path / "t.safetensors", "ids") as ids:  # only floating tensors take the model dtype
        assert ids.dtype == torch.int64 and not ids.is_floating_point()
        assert torch.equal(narrow(ids, 0, 1, 2), torch.tensor([1, 2]))


@pytest.mark.parametrize("lazy", [False, True])
def test_narrow_past_the_end_is_a_checkpoint_error(tmp_path: Path, lazy: bool) -> None:
    save_file({"w": torch.zeros(4, 3)}, tmp_path / "t.safetensors")
    with opened(tmp_path / "t.safetensors", "w") as tensor:  # safetensors alone would clamp to 2 rows
        loaded = tensor if lazy else torch.zeros(4, 3)
        with pytest.raises(CheckpointError, match=r"shape \(4, 3\) has no rows 2\.\.6 along dimension 0"):
            narrow(loaded, 0, 2, 4)
        assert materialize(loaded).shape == (4, 3)


# -- tensor-parallel ranks read only their slices -----------------------------------------------
