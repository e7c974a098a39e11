"""Tests for gpu_backend.config: ModelConfig (every arch in both config.json layouts, bad folders) and EngineConfig's defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from gpu_backend import config as config_module
from gpu_backend.config import EngineConfig, ModelConfig, default_max_num_seqs
from gpu_backend.errors import CheckpointError, UnsupportedArchitectureError

from checkpoints import (
    ARCHS,
    LAYOUTS,
    LLAMA3_ROPE,
    LLAMA32_ROPE,
    QWEN3_HEAD_DIM,
    build_checkpoint,
    read_config,
    write_config,
)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "llama3_rope": "LlamaForCausalLM", "llama32_tied": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def scaling_of(rope: dict[str, Any]) -> dict[str, Any]:
    return {"rope_type": "llama3", **{k: v for k, v in rope.items() if k != "rope_type"}}


EXPECTED: dict[str, dict[str, Any]] = {
    "llama": {"rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False, "eos_token_ids": (2,),
              "bos_token_id": 1, "head_dim": 16, "qkv_bias": False, "o_bias": False, "qk_norm": False,
              "sliding_window": None},
    "llama3_rope": {"rope_theta": 500000.0, "rope_scaling": scaling_of(LLAMA3_ROPE), "tie_word_embeddings": False,
                    "eos_token_ids": (2, 3, 4), "head_dim": 16},
    "llama32_tied": {"rope_theta": 500000.0, "rope_scaling": scaling_of(LLAMA32_ROPE), "tie_word_embeddings": True,
                     "eos_token_ids": (2, 3, 4)},
    "mistral": {"rope_theta": 1e6, "rope_scaling": None, "sliding_window": 4096, "qkv_bias": False, "eos_token_ids": (2,)},
    "qwen2": {"rope_theta": 1e6, "qkv_bias": True, "o_bias": False, "mlp_bias": False, "qk_norm": False,
              "sliding_window": None, "eos_token_ids": (3, 2), "bos_token_id": None, "head_dim": 16},
    "qwen3": {"rope_theta": 1e6, "qkv_bias": False, "o_bias": False, "qk_norm": True, "head_dim": QWEN3_HEAD_DIM,
              "sliding_window": None, "eos_token_ids": (3,)},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_in_both_layouts(tmp_path: Path, arch: str, layout: str) -> None:
    config = ModelConfig.from_pretrained(build_checkpoint(tmp_path, arch, transformers_layout=layout))
    assert config.architecture == ARCHITECTURES[arch]
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (384, 64, 128)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 4, 2)
    assert config.max_position_embeddings == config.max_context_len == 1024
    assert config.rms_norm_eps == 1e-6
    assert config.checkpoint_dtype == "float32"
    for field, value in EXPECTED[arch].items():
        assert getattr(config, field) == value, field


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_transformers_own_reading(tmp_path: Path, arch: str, layout: str) -> None:
    from transformers import AutoConfig

    folder = build_checkpoint(tmp_path, arch, transformers_layout=layout)
    config, reference = ModelConfig.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    rope = dict(reference.rope_parameters)
    assert config.rope_theta == rope.pop("rope_theta")
    assert (config.rope_scaling or {"rope_type": "default"}) == rope
    assert config.head_dim == (getattr(reference, "head_dim", None) or 64 // 4)
    assert config.tie_word_embeddings == reference.tie_word_embeddings
    assert config.sliding_window == getattr(reference, "sliding_window", None)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_dtype_from_dtype_or_torch_dtype(tmp_path: Path, layout: str) -> None:
    folder = build_checkpoint(tmp_path, "qwen2", dtype="bfloat16", transformers_layout=layout)
    assert ("torch_dtype" if layout == "v4" else "dtype") in read_config(folder)
    assert ModelConfig.from_pretrained(folder).checkpoint_dtype == "bfloat16"


def test_v4_layout_keys(tmp_path: Path) -> None:
    raw = read_config(build_checkpoint(tmp_path, "llama3_rope", transformers_layout="v4"))
    assert "rope_parameters" not in raw and "dtype" not in raw
    assert raw["rope_theta"] == 500000.0 and raw["rope_scaling"]["rope_type"] == "llama3"
    assert raw["torch_dtype"] == "float32"


def test_qwen2_v4_unused_sliding_window_is_ignored(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "qwen2", transformers_layout="v4")
    assert read_config(folder)["sliding_window"] == 32768
    assert ModelConfig.from_pretrained(folder).sliding_window is None


def test_mistral_window_below_positions_caps_context(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "mistral")
    write_config(folder, {**read_config(folder), "sliding_window": 512})
    assert ModelConfig.from_pretrained(folder).max_context_len == 512


def test_generation_config_absent_uses_config_eos(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "llama3_rope")
    (folder / "generation_config.json").unlink()
    assert ModelConfig.from_pretrained(folder).eos_token_ids == (2,)


def test_eos_list_in_config_json(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "llama32_tied")
    (folder / "generation_config.json").unlink()
    assert ModelConfig.from_pretrained(folder).eos_token_ids == (2, 3, 4)


def test_no_eos_anywhere(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "qwen3")
    (folder / "generation_config.json").unlink()
    write_config(folder, {**read_config(folder), "eos_token_id": None})
    assert ModelConfig.from_pretrained(folder).eos_token_ids == ()


@pytest.mark.parametrize(("arch", "expected"), [
    ("llama", (True, True, True)),  # attention_bias covers q/k/v and o; mlp_bias the MLP
    ("qwen3", (True, True, False)),  # attention_bias covers o_proj too; no MLP bias in the model class
    ("mistral", (False, False, False)),  # the model class ignores both keys
    ("qwen2", (True, False, False)),  # q/k/v always, o never
])
def test_bias_flags_follow_each_model_class(arch: str, expected: tuple[bool, bool, bool]) -> None:
    raw = {**base_raw(arch), "attention_bias": True, "mlp_bias": True}
    config = ModelConfig.from_dict(raw)
    assert (config.qkv_bias, config.o_bias, config.mlp_bias) == expected


def base_raw(arch: str = "llama") -> dict[str, Any]:
    return {"architectures": [ARCHITECTURES[arch]], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}


def test_defaults_for_optional_keys() -> None:
    config = ModelConfig.from_dict(base_raw())
    assert (config.num_key_value_heads, config.head_dim, config.rope_theta, config.rope_scaling) == (2, 4, 10000.0, None)
    assert config.eos_token_ids == () and config.checkpoint_dtype == "float32"


def test_legacy_rope_type_key() -> None:
    config = ModelConfig.from_dict({**base_raw(), "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    both = ModelConfig.from_dict({**base_raw(), "rope_scaling": {"type": "linear", "rope_type": "linear", "factor": 2.0}})
    assert both.rope_scaling == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "rope type 'yarn'"),
    ("hidden_act", "gelu", "hidden_act 'gelu'"),
    ("dtype", "float8_e4m3fn", "dtype 'float8_e4m3fn'"),
])
def test_unsupported_numerics(key: str, value: Any, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        ModelConfig.from_dict({**base_raw(), key: value}, source="some/config.json")


def test_unsupported_architecture(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path, "llama")
    write_config(folder, {**read_config(folder), "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(UnsupportedArchitectureError, match=r"config\.json.*GPT2LMHeadModel.*LlamaForCausalLM"):
        ModelConfig.from_pretrained(folder)
    assert issubclass(UnsupportedArchitectureError, CheckpointError)


def test_no_architectures_names_model_type() -> None:
    raw = {**base_raw(), "architectures": None, "model_type": "gemma"}
    with pytest.raises(UnsupportedArchitectureError, match="model_type 'gemma'"):
        ModelConfig.from_dict(raw)


def test_not_a_folder(tmp_path: Path) -> None:
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"")
    for path in (file, tmp_path / "absent"):
        with pytest.raises(CheckpointError, match=f"{path.name} is not a folder"):
            ModelConfig.from_pretrained(path)


def test_no_config_json(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="has no config.json"):
        ModelConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_bad_json_names_the_file(tmp_path: Path, name: str) -> None:
    folder = build_checkpoint(tmp_path, "llama")
    (folder / name).write_text("{ not json")
    with pytest.raises(CheckpointError, match=f"{name} is not valid JSON"):
        ModelConfig.from_pretrained(folder)


def test_json_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json must hold a JSON object"):
        ModelConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("key", ["hidden_size", "vocab_size", "num_hidden_layers", "intermediate_size"])
def test_missing_key_names_file_and_key(tmp_path: Path, key: str) -> None:
    folder = build_checkpoint(tmp_path, "qwen2")
    raw = read_config(folder)
    del raw[key]
    write_config(folder, raw)
    with pytest.raises(CheckpointError, match=f"config.json: required key '{key}' is missing"):
        ModelConfig.from_pretrained(folder)


def test_max_num_seqs_defaults_to_4_per_core_on_cpu_and_256_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cpus", lambda: 3)
    assert EngineConfig(model="m", device="cpu").max_num_seqs == 12
    assert EngineConfig(model="m", device="cuda").max_num_seqs == 256  # a config only: no GPU needed
    assert default_max_num_seqs(torch.device("cuda", 1)) == 256


def test_an_explicit_max_num_seqs_wins_on_every_device() -> None:
    assert EngineConfig(model="m", device="cpu", max_num_seqs=300).max_num_seqs == 300
    assert EngineConfig(model="m", device="cuda", max_num_seqs=3).max_num_seqs == 3
    with pytest.raises(ValueError, match="must be positive"):
        EngineConfig(model="m", device="cpu", max_num_seqs=0)


def test_available_cpus_counts_the_cores_this_process_may_use() -> None:
    assert 1 <= config_module.available_cpus() <= (os.cpu_count() or 1)


def test_compressed_weights_default_to_auto_and_refuse_anything_else() -> None:
    assert EngineConfig(model="m").compressed_weights == "auto"
    with pytest.raises(ValueError, match="must be auto, kernel or decode_at_load, not 'lazy'"):
        EngineConfig(model="m", compressed_weights="lazy")
