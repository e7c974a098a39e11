"""Sanity of the test checkpoints themselves: transformers loads each one back exactly as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from checkpoints import ARCHS, LAYOUTS, build_checkpoint, read_config


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt", device="cpu") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return tensors


@pytest.mark.parametrize("shard_bytes", [None, 40_000])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loads_it_back(tmp_path: Path, arch: str, layout: str, shard_bytes: int | None) -> None:
    from transformers import AutoModelForCausalLM

    folder = build_checkpoint(tmp_path / "ckpt", arch, transformers_layout=layout, shard_bytes=shard_bytes)
    model = AutoModelForCausalLM.from_pretrained(folder)
    state = model.state_dict()
    tensors = saved_tensors(folder)
    assert set(tensors) == set(state) - ({"lm_head.weight"} if arch == "llama32_tied" else set())
    for name, tensor in tensors.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    if shard_bytes is None:
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    else:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
        assert set(index["weight_map"]) == set(tensors)
    logits = model(torch.tensor([[1, 5, 7, 9]])).logits[0]
    assert logits.std() > 1.0  # large init: next-token logits spread far apart


def test_layouts_differ_only_in_spelling(tmp_path: Path) -> None:
    v5 = read_config(build_checkpoint(tmp_path / "v5", "llama3_rope"))
    v4 = read_config(build_checkpoint(tmp_path / "v4", "llama3_rope", transformers_layout="v4"))
    rope = dict(v5.pop("rope_parameters"))
    assert v4.pop("rope_theta") == rope.pop("rope_theta")
    assert v4.pop("rope_scaling") == rope
    assert v4.pop("torch_dtype") == v5.pop("dtype")
    v4.pop("transformers_version"), v5.pop("transformers_version")
    assert v4 == v5


def test_tied_and_qwen_specific_tensors(tmp_path: Path) -> None:
    tied = saved_tensors(build_checkpoint(tmp_path / "tied", "llama32_tied"))
    assert "lm_head.weight" not in tied
    qwen2 = saved_tensors(build_checkpoint(tmp_path / "qwen2", "qwen2"))
    assert {"q_proj.bias", "k_proj.bias", "v_proj.bias"} <= {n.split("self_attn.")[-1] for n in qwen2}
    assert "model.layers.0.self_attn.o_proj.bias" not in qwen2
    assert qwen2["model.layers.0.self_attn.q_proj.bias"].abs().sum() > 0  # random, so a dropped bias shows
    qwen3 = saved_tensors(build_checkpoint(tmp_path / "qwen3", "qwen3"))
    assert qwen3["model.layers.0.self_attn.q_norm.weight"].shape == (32,)
    assert qwen3["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 32, 64)
    assert qwen3["model.layers.0.self_attn.o_proj.weight"].shape == (64, 4 * 32)


def test_dtype_seed_and_rng_isolation(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = saved_tensors(build_checkpoint(tmp_path / "a", "llama", dtype="bfloat16"))
    assert torch.rand(1) == before  # the caller's global RNG did not move
    again = saved_tensors(build_checkpoint(tmp_path / "b", "llama", dtype="bfloat16"))
    other = saved_tensors(build_checkpoint(tmp_path / "c", "llama", dtype="bfloat16", seed=1))
    assert all(t.dtype == torch.bfloat16 for t in first.values())
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["model.norm.weight"], other["model.norm.weight"])
    assert read_config(tmp_path / "a")["dtype"] == "bfloat16"


def test_options(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "qwen3", num_layers=3, num_kv_heads=4, vocab_size=300, eos_token_id=[7, 8],
                              tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0})
    raw = read_config(folder)
    assert (raw["num_hidden_layers"], raw["num_key_value_heads"], raw["vocab_size"]) == (3, 4, 300)
    assert raw["tie_word_embeddings"] is True and raw["eos_token_id"] == [7, 8]
    assert raw["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [7, 8]
    with pytest.raises(ValueError, match="unknown arch"):
        build_checkpoint(tmp_path / "x", "gpt2")
