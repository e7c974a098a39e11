"""Tests for gpu_backend.loader: safetensors files -> parameters through packed names and weight_loaders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpu_backend.checkpoint_tensor import materialize
from gpu_backend.config import ModelConfig
from gpu_backend.errors import CheckpointError
from gpu_backend.kernels import get_kernels
from gpu_backend.loader import load_weights, packed_name, weight_files
from gpu_backend.models.registry import build_model
from gpu_backend.parallel.state import TensorParallel, set_tensor_parallel

from checkpoints import ARCHS, build_checkpoint

VOCAB, HIDDEN, Q_SIZE, KV_SIZE = 11, 8, 8, 4
CPU = torch.device("cpu")


class QKVParameter(torch.nn.Parameter):
    """Stand-in for the model's fused qkv weight: each checkpoint shard fills its own row range."""

    def weight_loader(self, param: torch.nn.Parameter, tensor: torch.Tensor, shard_id: str) -> None:
        start, size = {"q": (0, Q_SIZE), "k": (Q_SIZE, KV_SIZE), "v": (Q_SIZE + KV_SIZE, KV_SIZE)}[shard_id]
        assert tensor.shape[0] == size, (shard_id, tensor.shape)
        param.data[start:start + size].copy_(materialize(tensor))


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = torch.nn.Module()
        self.qkv_proj.weight = QKVParameter(torch.zeros(Q_SIZE + 2 * KV_SIZE, HIDDEN))
        self.o_proj = torch.nn.Linear(Q_SIZE, HIDDEN, bias=False)


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attention()
        self.input_layernorm = torch.nn.Module()
        self.input_layernorm.weight = torch.nn.Parameter(torch.zeros(HIDDEN))


class Body(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
        self.layers = torch.nn.ModuleList([Layer()])
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.zeros(HIDDEN))


class TinyModel(torch.nn.Module):
    """Checkpoint names like Llama's; q/k/v fused as the engine's models fuse them."""

    packed_modules: ClassVar[dict[str, tuple[str, str]]] = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}

    def __init__(self, *, tied: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tie_word_embeddings = tied
        self.model = Body()
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.to(dtype)
        for param in self.parameters():
            param.data.fill_(float("nan"))  # anything the loader misses stays visible


def checkpoint_tensors(*, seed: int = 0, lm_head: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.layers.0.self_attn.q_proj.weight": (Q_SIZE, HIDDEN),
        "model.layers.0.self_attn.k_proj.weight": (KV_SIZE, HIDDEN),
        "model.layers.0.self_attn.v_proj.weight": (KV_SIZE, HIDDEN),
        "model.layers.0.self_attn.o_proj.weight": (HIDDEN, Q_SIZE),
        "model.layers.0.input_layernorm.weight": (HIDDEN,),
        "model.norm.weight": (HIDDEN,),
    }
    if lm_head:
        shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def assert_loaded(model: TinyModel, tensors: dict[str, torch.Tensor]) -> None:
    attn = model.model.layers[0].self_attn
    qkv = torch.cat([tensors[f"model.layers.0.self_attn.{n}_proj.weight"] for n in "qkv"])
    torch.testing.assert_close(attn.qkv_proj.weight.data, qkv.to(attn.qkv_proj.weight.dtype), rtol=0, atol=0)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight",
                 "model.layers.0.input_layernorm.weight", "model.norm.weight"):
        param = model.get_parameter(name)
        torch.testing.assert_close(param.data, tensors[name].to(param.dtype), rtol=0, atol=0)


def write_sharded(folder: Path, tensors: dict[str, torch.Tensor], *, index: bool = True) -> None:
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, folder / file)
    if index:
        weight_map = {n: file for file, part in halves.items() for n in part}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_single_file_fills_fused_and_plain_parameters(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    model = TinyModel()
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert_loaded(model, tensors)
    torch.testing.assert_close(model.lm_head.weight.data, tensors["lm_head.weight"], rtol=0, atol=0)


def test_sharded_reads_only_files_in_the_index(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    write_sharded(tmp_path, tensors)
    save_file({"stray.weight": torch.zeros(3)}, tmp_path / "adapter.safetensors")  # not in the index
    model = TinyModel()
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert_loaded(model, tensors)
    assert [f.name for f in weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                        "model-00002-of-00002.safetensors"]


def test_several_files_without_index_are_all_read(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    write_sharded(tmp_path, tensors, index=False)
    model = TinyModel()
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert_loaded(model, tensors)


def test_bfloat16_checkpoint_converts_to_float32(tmp_path: Path) -> None:
    tensors = {name: t.to(torch.bfloat16) for name, t in checkpoint_tensors().items()}
    save_file(tensors, tmp_path / "model.safetensors")
    model = TinyModel()
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert model.model.norm.weight.dtype == torch.float32
    assert_loaded(model, tensors)  # bf16 -> fp32 is exact


def test_float32_checkpoint_converts_to_bfloat16(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    model = TinyModel(dtype=torch.bfloat16)
    load_weights(model, tmp_path, dtype=torch.bfloat16, device=CPU)
    assert_loaded(model, tensors)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    tensors["model.norm.weight"] = torch.ones(HIDDEN + 1)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight'.*\(9,\).*\(8,\)"):
        load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU)


def test_unknown_tensor_is_an_error(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(4)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_norm\.weight"):
        load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU)


@pytest.mark.parametrize("dropped", ["model.norm.weight", "model.layers.0.self_attn.v_proj.weight", "lm_head.weight"])
def test_missing_tensor_is_an_error(tmp_path: Path, dropped: str) -> None:
    tensors = checkpoint_tensors()
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"checkpoint .* has no weight for {dropped.replace('.', '[.]')}$"):
        load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU)


@pytest.mark.parametrize("with_lm_head", [False, True])
def test_tied_lm_head_is_skipped(tmp_path: Path, with_lm_head: bool) -> None:
    tensors = checkpoint_tensors(lm_head=with_lm_head)
    save_file(tensors, tmp_path / "model.safetensors")
    model = TinyModel(tied=True)
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert_loaded(model, tensors)  # embed_tokens keeps its own values, lm_head.weight did not overwrite them
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_rotary_inv_freq_buffers_are_skipped(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(tensors, tmp_path / "model.safetensors")
    model = TinyModel()
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert_loaded(model, tensors)


def test_weight_loader_of_unfused_parameter_gets_shard_id_none(tmp_path: Path) -> None:
    calls: list[tuple[str, tuple[int, ...], object]] = []
    model = TinyModel()
    norm = model.model.norm.weight
    norm.weight_loader = lambda param, tensor, shard_id: calls.append(("norm", tuple(tensor.shape), shard_id))
    save_file(checkpoint_tensors(), tmp_path / "model.safetensors")
    load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    assert calls == [("norm", (HIDDEN,), None)]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_weights(TinyModel(), tmp_path / "absent", dtype=torch.float32, device=CPU)


def test_bin_only_folder_says_how_to_convert(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights in .*\.bin checkpoints are not supported"):
        load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU)


def test_index_naming_an_absent_shard(tmp_path: Path) -> None:
    write_sharded(tmp_path, checkpoint_tensors())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU)


def test_corrupt_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not js")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU)


def test_packed_name_matches_whole_name_parts() -> None:
    packed = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "k_proj": ("qkv_proj", "k")}
    assert packed_name("model.layers.3.mlp.up_proj.weight", packed) == ("model.layers.3.mlp.gate_up_proj.weight", 1)
    assert packed_name("model.layers.3.self_attn.k_proj.bias", packed) == ("model.layers.3.self_attn.qkv_proj.bias", "k")
    assert packed_name("model.layers.3.mlp.gate_up_proj.weight", packed) == ("model.layers.3.mlp.gate_up_proj.weight", None)
    assert packed_name("model.norm.weight", packed) == ("model.norm.weight", None)


def test_progress_is_quiet_without_a_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    save_file(checkpoint_tensors(), tmp_path / "model.safetensors")
    load_weights(TinyModel(), tmp_path, dtype=torch.float32, device=CPU, progress=True)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shard_bytes", [None, 40_000])
def test_loads_transformers_checkpoints_into_same_named_model(tmp_path: Path, arch: str,
                                                              shard_bytes: int | None) -> None:
    """A transformers model has the checkpoint's own names: every tensor must land, nothing else."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = build_checkpoint(tmp_path, arch, shard_bytes=shard_bytes, dtype="bfloat16")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    load_weights(model, folder, dtype=torch.float32, device=CPU, progress=False)
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)



ROW_PARALLEL = ("o_proj.weight", "down_proj.weight")  # split along the input (column) dimension


@pytest.fixture
def tensor_parallel() -> Iterator[None]:
    yield
    set_tensor_parallel(TensorParallel())


def rank_slice(name: str, tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """What rank ``rank`` of ``size`` keeps of checkpoint tensor ``name`` (norms are replicated)."""
    if "norm" in name:
        return tensor
    return tensor.chunk(size, dim=1 if name.endswith(ROW_PARALLEL) else 0)[rank]


def expected_parameters(full: dict[str, torch.Tensor], packed: dict, rank: int, size: int) -> dict[str, torch.Tensor]:
    """The engine model's parameters on one rank, cut from the whole tensors with plain torch."""
    order = [shard_id for _, shard_id in packed.values()]
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, tensor in full.items():
        target, shard_id = packed_name(name, packed)
        position = order.index(shard_id) if shard_id is not None else 0
        pieces.setdefault(target, []).append((position, rank_slice(name, tensor, rank, size)))
    expected = {target: torch.cat([p for _, p in sorted(parts, key=lambda part: part[0])])
                for target, parts in pieces.items()}
    expected.setdefault("lm_head.weight", expected["model.embed_tokens.weight"])  # tied: not saved
    return expected


@pytest.mark.usefixtures("tensor_parallel")
@pytest.mark.parametrize("rank, size", [(0, 1), (1, 2)])
@pytest.mark.parametrize("arch", [*ARCHS, "llama_v4_sharded"])
def test_engine_model_rank_reads_only_its_slices(checkpoints: dict[str, Path], arch: str, rank: int,
                                                 size: int) -> None:
    folder = checkpoints[arch]
    set_tensor_parallel(TensorParallel(rank=rank, size=size))
    with torch.device("cpu"):  # as ModelRunner._build_and_load, in float32 like the checkpoint
        model = build_model(ModelConfig.from_pretrained(folder), get_kernels("torch"))
    num_bytes_read = load_weights(model, folder, dtype=torch.float32, device=CPU, progress=False)

    full = {name: t for file in weight_files(folder) for name, t in load_file(file).items()}
    sharded = sum(t.nbytes for name, t in full.items() if "norm" not in name)
    replicated = sum(t.nbytes for name, t in full.items() if "norm" in name)
    assert num_bytes_read == sharded // size + replicated
    expected = expected_parameters(full, model.packed_modules, rank, size)
    for name, param in model.named_parameters(remove_duplicate=False):
        torch.testing.assert_close(param.data, expected[name], rtol=0, atol=0, msg=name)


# -- pipeline stages: owns_weight and weight_aliases -------------------------------------------


class LastStage(torch.nn.Module):
    """The last pipeline stage of a tied model: final norm and lm_head, no embedding or layers."""

    tie_word_embeddings = True
    weight_aliases: ClassVar[dict[str, str]] = {"model.embed_tokens.weight": "lm_head.weight"}

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.norm = torch.nn.RMSNorm(HIDDEN)
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        for param in self.parameters():
            param.data.fill_(float("nan"))
        self.asked: list[str] = []

    def owns_weight(self, name: str) -> bool:
        self.asked.append(name)
        return name in ("model.norm.weight", "model.embed_tokens.weight")


@pytest.mark.parametrize("with_lm_head", [False, True])
def test_stage_reads_only_its_weights_and_fills_the_tied_head_through_an_alias(tmp_path: Path,
                                                                               with_lm_head: bool) -> None:
    tensors = checkpoint_tensors(lm_head=with_lm_head)
    save_file(tensors, tmp_path / "model.safetensors")
    model = LastStage()
    num_bytes_read = load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
    embed, norm = tensors["model.embed_tokens.weight"], tensors["model.norm.weight"]
    assert torch.equal(model.lm_head.weight.data, embed) and torch.equal(model.model.norm.weight.data, norm)
    assert num_bytes_read == embed.nbytes + norm.nbytes  # the layers' tensors were never read
    assert "model.layers.0.self_attn.q_proj.weight" in model.asked


def test_stage_without_its_aliased_tensor_is_incomplete(tmp_path: Path) -> None:
    tensors = checkpoint_tensors()
    del tensors["model.embed_tokens.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has no weight for model\.embed_tokens\.weight$"):
        load_weights(LastStage(), tmp_path, dtype=torch.float32, device=CPU)


def test_weight_loader_error_names_the_tensor(tmp_path: Path, tensor_parallel: None) -> None:
    from gpu_backend.layers.linear import ColumnParallelLinear

    set_tensor_parallel(TensorParallel(rank=1, size=2))
    model = torch.nn.Module()
    model.proj = ColumnParallelLinear(3, 8)
    save_file({"proj.weight": torch.zeros(6, 3)}, tmp_path / "model.safetensors")  # 8 rows expected
    with pytest.raises(CheckpointError, match=r"tensor 'proj\.weight': checkpoint shape \(6, 3\) has no rows 4\.\.8"):
        load_weights(model, tmp_path, dtype=torch.float32, device=CPU)
