"""Linear layers holding ECF weights: each tensor-parallel rank keeps its own slice of every coded
part, escapes re-based, and decodes to exactly the dense weight the same rank loads from the original.

The checkpoints are bfloat16 with rare exponents planted in every matrix (in both halves of its rows
and of its columns), so every rank's slice has escapes to re-base; k_proj and v_proj are small enough
that the compressor stores them raw, so the layer codes those itself. On CPU the layers decode with
the plain-torch twin (reference.linear); the engine keeps decode-at-load there, and these tests
call the loader with keep_compressed=True directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from checkpoints import build_checkpoint
from compressed_checkpoints import compress
from safetensors.torch import load_file, save_file

from gpu_backend.checkpoint_tensor import CheckpointTensor
from gpu_backend.config import ModelConfig
from gpu_backend.errors import CompressedWeightsError
from gpu_backend.kernels import get_kernels
from gpu_backend.layers.linear import LinearBase, built_compressed
from gpu_backend.loader import load_weights, weight_files
from gpu_backend.models.registry import build_model
from gpu_backend.parallel.state import TensorParallel, set_tensor_parallel
from gpu_backend.weights.codec import decode_parts, encode
from gpu_backend.weights.packed import (
    CompressedWeight,
    coded_source,
    held_weight_bytes,
    slice_cols,
    slice_rows,
)
from gpu_backend.weights.planes import padded_cols

CPU = torch.device("cpu")
BF16 = torch.bfloat16


def _plant_escapes(tensor: torch.Tensor) -> torch.Tensor:
    """Twenty rare exponents (more than the table's 15 entries hold) spread over rows and columns."""
    rows, cols = tensor.shape
    out = tensor.clone()
    for i in range(20):
        out[(7 * i) % rows, (13 * i + i // 2) % cols] = (-1) ** i * 2.0 ** (-100 + 3 * i)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """arch -> (bfloat16 checkpoint with planted escapes, its ECF copy)."""
    root = tmp_path_factory.mktemp("ecf_layers")
    out = {}
    for arch in ("llama", "qwen2"):
        src = build_checkpoint(root / arch, arch, dtype="bfloat16", num_layers=2)
        for file in weight_files(src):
            tensors = load_file(file)
            tensors = {name: _plant_escapes(t) if t.dim() == 2 and "embed" not in name else t
                       for name, t in tensors.items()}
            save_file(tensors, file, metadata={"format": "pt"})
        compress(src, root / f"{arch}-ecf")
        out[arch] = (src, root / f"{arch}-ecf")
    return out


@pytest.fixture
def tensor_parallel() -> Iterator[None]:
    yield
    set_tensor_parallel(TensorParallel())


def _build(folder: Path, born_compressed: bool = False) -> torch.nn.Module:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(BF16)  # as ModelRunner._build_and_load
    try:
        with CPU, built_compressed(born_compressed):
            return build_model(ModelConfig.from_pretrained(folder), get_kernels("torch"))
    finally:
        torch.set_default_dtype(previous)


def _load(folder: Path, keep_compressed: bool) -> torch.nn.Module:
    model = _build(folder)
    load_weights(model, folder, dtype=BF16, device=CPU, progress=False, keep_compressed=keep_compressed)
    return model


def _linears(model: torch.nn.Module) -> dict[str, LinearBase]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase)}


@pytest.mark.usefixtures("tensor_parallel")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(("rank", "size"), [(0, 1), (0, 2), (1, 2), (3, 4)])
def test_each_rank_keeps_its_slices_and_decodes_its_dense_weight(folders: dict[str, tuple[Path, Path]], arch: str,
                                                                  rank: int, size: int) -> None:
    src, ecf = folders[arch]
    set_tensor_parallel(TensorParallel(rank=rank, size=size))
    dense = _linears(_load(src, keep_compressed=False))
    held = _linears(_load(ecf, keep_compressed=True))
    assert sorted(held) == sorted(dense)
    total_escapes = 0
    for name, layer in held.items():
        assert layer.compressed is not None and layer.weight.numel() == 0, name
        assert layer.compressed.shape == dense[name].weight.shape, name
        expected = dense[name].weight.data.view(torch.int16)
        assert torch.equal(layer.compressed.decode().view(torch.int16), expected), name
        if layer.bias is not None:
            assert torch.equal(layer.bias.data, dense[name].bias.data), name
        total_escapes += layer.compressed.num_escapes
        num_sources = {"qkv_proj": 3, "gate_up_proj": 2}.get(name.rsplit(".", 1)[-1], 1)
        assert len(layer.compressed.source_rows) == num_sources, name
    assert total_escapes > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compressed_layers_compute_what_dense_ones_do(folders: dict[str, tuple[Path, Path]], arch: str) -> None:
    src, ecf = folders[arch]
    dense_model, held_model = _load(src, keep_compressed=False), _load(ecf, keep_compressed=True)
    dense, held = _linears(dense_model), _linears(held_model)
    layer0 = dense_model.model.layers[0]
    gen = torch.Generator().manual_seed(0)
    for name, layer in held.items():
        for num_rows in (1, 3):
            x = torch.randn(num_rows, layer.compressed.shape[1], generator=gen).to(BF16)
            assert torch.equal(layer(x), dense[name](x)), name
    norm = layer0.input_layernorm  # a layer's forward_normed / forward_gated too
    x = torch.randn(2, norm.weight.shape[0], generator=gen).to(BF16)
    for prefix in ("model.layers.0.self_attn.qkv_proj", "model.layers.1.mlp.gate_up_proj"):
        a, ra = held[prefix].forward_normed(x, x, norm)
        b, rb = dense[prefix].forward_normed(x, x, norm)
        assert torch.equal(a, b) and torch.equal(ra, rb), prefix
    down = "model.layers.1.mlp.down_proj"
    gate_up = torch.randn(2, 2 * held[down].compressed.shape[1], generator=gen).to(BF16)
    assert torch.equal(held[down].forward_gated(gate_up), dense[down].forward_gated(gate_up))


def test_held_weights_are_three_quarters_and_a_little(folders: dict[str, tuple[Path, Path]]) -> None:
    """12 bits a weight (of the columns padded to whole K tiles), a byte of window base a row, 16 bytes
    an escaped group of 8."""
    src, ecf = folders["llama"]
    dense, held = _load(src, keep_compressed=False), _load(ecf, keep_compressed=True)
    for name, layer in _linears(held).items():
        weight = layer.compressed
        rows, cols = weight.shape
        expected = 12 * rows * (padded_cols(cols) // 8) + rows + 16 * weight.escapes.shape[0]
        assert weight.nbytes == expected, name
        assert weight.escapes.shape[0] <= weight.num_escapes, name
    assert held_weight_bytes(held) < held_weight_bytes(dense)
    big = CompressedWeight.stack([_coded(_escaped(1024, 2048, 0)), _coded(_escaped(512, 2048, 1))])
    assert 0.75 < big.nbytes / (big.shape.numel() * 2) < 0.753


def test_layers_built_compressed_never_hold_a_dense_weight(folders: dict[str, tuple[Path, Path]]) -> None:
    """As ModelRunner builds for kernel mode: no dense linear weight is ever made, and loading (which
    calls keep_compressed again, a no-op then) gives what keep_compressed after building gives."""
    src, ecf = folders["qwen2"]
    model = _build(ecf, born_compressed=True)
    assert all(layer.weight.numel() == 0 for layer in _linears(model).values())
    assert _build(ecf).model.layers[0].mlp.gate_up_proj.weight.numel() > 0  # the flag does not outlive the build
    load_weights(model, ecf, dtype=BF16, device=CPU, progress=False, keep_compressed=True)
    expected = _linears(_load(src, keep_compressed=False))
    for name, layer in _linears(model).items():
        assert layer.compressed is not None and layer.compressed.shape == expected[name].weight.shape, name
        assert torch.equal(layer.compressed.decode().view(torch.int16), expected[name].weight.data.view(torch.int16))
        if layer.bias is not None:
            assert torch.equal(layer.bias.data, expected[name].bias.data), name


def test_plain_folder_keeps_dense_weights(folders: dict[str, tuple[Path, Path]]) -> None:
    src, _ = folders["llama"]
    for layer in _linears(_load(src, keep_compressed=True)).values():
        assert layer.compressed is None and layer.weight.numel() > 0


# -- slicing the parts --------------------------------------------------------------------------


def _escaped(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return _plant_escapes(0.02 * torch.randn(rows, cols, generator=gen)).to(BF16)


@pytest.mark.parametrize(("start", "length"), [(0, 51), (2, 7), (8, 43), (50, 1), (0, 50)])
def test_column_slices_rebase_the_escapes(start: int, length: int) -> None:
    tensor = _escaped(37, 51, start + length)
    parts = encode(tensor)
    assert parts["escape_cols"].numel() >= 5
    got = decode_parts(slice_cols(parts, start, length), BF16, (37, length))
    assert torch.equal(got.view(torch.int16), tensor[:, start:start + length].contiguous().view(torch.int16))


@pytest.mark.parametrize(("start", "length"), [(0, 37), (3, 20), (36, 1)])
def test_row_slices_rebase_the_escapes(start: int, length: int) -> None:
    tensor = _escaped(37, 51, start)
    got = decode_parts(slice_rows(encode(tensor), start, length), BF16, (length, 51))
    assert torch.equal(got.view(torch.int16), tensor[start:start + length].contiguous().view(torch.int16))


def test_odd_column_start_is_refused_by_the_slicer_and_coded_anew_by_the_layer_path(tmp_path: Path) -> None:
    tensor = _escaped(9, 20, 1)
    with pytest.raises(CompressedWeightsError, match="even column"):
        slice_cols(encode(tensor), 3, 5)
    coded = coded_source(tensor, (1, 3, 5), BF16, CPU)  # a plain tensor (or a raw one): read dense, coded here
    assert torch.equal(coded.decode().view(torch.int16), tensor[:, 3:8].contiguous().view(torch.int16))


def _coded(tensor: torch.Tensor) -> CompressedWeight:
    return CompressedWeight.from_parts(encode(tensor), BF16)


def test_stacked_sources_keep_their_own_windows() -> None:
    upper, lower = _escaped(6, 40, 1), (1e6 * _escaped(5, 40, 2).float()).to(BF16)
    weight = CompressedWeight.stack([_coded(upper), _coded(lower)])
    bases = weight.exponent_base.tolist()
    assert len(set(bases[:6])) == 1 and len(set(bases[6:])) == 1 and bases[0] != bases[6]
    assert weight.source_rows == (6, 5) and weight.escapes.shape[0] >= 2  # the planted exponents in both
    assert torch.equal(weight.decode().view(torch.int16), torch.cat([upper, lower]).view(torch.int16))


def test_a_weight_no_window_codes_smaller_is_held_dense(folders: dict[str, tuple[Path, Path]]) -> None:
    """Mostly exact zeros: every group escapes, so the code would be larger than the weight."""
    layer = LinearBase(64, 16, bias=False)
    layer.keep_compressed()
    sparse = torch.zeros(16, 64)
    sparse[::3, ::5] = 0.02 * torch.randn(6, 13)
    layer.keep_coded(0, CompressedWeight.from_dense(sparse.to(BF16)))
    layer.finish_loading()
    assert layer.compressed is None
    assert torch.equal(layer.weight.data.view(torch.int16), sparse.to(BF16).view(torch.int16))


def test_checkpoint_tensor_gives_coded_parts_only_in_its_own_dtype(folders: dict[str, tuple[Path, Path]]) -> None:
    from gpu_backend.weights.reader import open_weights

    _, ecf = folders["llama"]
    with open_weights(weight_files(ecf)[0]) as handle:
        name = "model.layers.0.mlp.up_proj.weight"
        as_bf16 = CheckpointTensor(name, handle.get_slice(name), dtype=BF16, device=CPU)
        parts = as_bf16.coded_parts()
        assert parts is not None and as_bf16.bytes_read == sum(p.nbytes for p in parts.values())
        assert CheckpointTensor(name, handle.get_slice(name), dtype=torch.float32, device=CPU).coded_parts() is None
        raw = "model.layers.0.self_attn.k_proj.weight"  # 32 x 64: kept raw by the compressor
        assert CheckpointTensor(raw, handle.get_slice(raw), dtype=BF16, device=CPU).coded_parts() is None

