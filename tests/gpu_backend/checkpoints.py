"""Tiny random-weight Hugging Face checkpoints for tests, written by transformers itself.

Every architecture the engine serves gets a checkpoint of hidden size 64 that builds and saves in
well under a second. Weights are drawn from a seeded generator with a large standard deviation so
the next-token logits are spread far apart: greedy decoding then picks the same token in float32,
bfloat16 and under a different order of float operations, which makes engine-vs-transformers
comparisons exact. Norm weights and biases are random too, so a loader that forgets one is caught.

transformers is a test-only dependency; gpu_backend never imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

LAYOUTS = ("v5", "v4")
HIDDEN_SIZE = 64
NUM_HEADS = 4
INTERMEDIATE_SIZE = 128
QWEN3_HEAD_DIM = 32  # explicit and != HIDDEN_SIZE // NUM_HEADS (16), as in real Qwen3 checkpoints
MAX_POSITIONS = 1024
# original_max_position_embeddings 256 with factors 1/4 puts the 16-dim rotary's wavelengths in all
# three llama3 bands at theta 5e5: kept (< 64), smoothed (64..256) and divided by factor (> 256).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}
LLAMA32_ROPE = {**LLAMA3_ROPE, "factor": 32.0}


@dataclass(frozen=True)
class ArchSpec:
    """What one test arch looks like, shaped like the real checkpoint family it stands for."""

    model_type: str
    rope_theta: float
    rope: dict[str, Any] | None = None  # scaling keys next to rope_type, as in rope_parameters
    tied: bool = False
    bos: int | None = 1
    eos: int | list[int] | None = 2  # config.json
    gen_eos: int | list[int] | None = 2  # generation_config.json (what the engine should use)
    extra: dict[str, Any] = field(default_factory=dict)


SPECS = {
    "llama": ArchSpec("llama", 10000.0),
    "llama3_rope": ArchSpec("llama", 500000.0, LLAMA3_ROPE, gen_eos=[2, 3, 4]),  # Llama 3.1: int vs list
    "llama32_tied": ArchSpec("llama", 500000.0, LLAMA32_ROPE, tied=True, eos=[2, 3, 4], gen_eos=[2, 3, 4]),
    "mistral": ArchSpec("mistral", 1000000.0, extra={"sliding_window": 4096}),
    "qwen2": ArchSpec("qwen2", 1000000.0, bos=None, eos=3, gen_eos=[3, 2],
                      extra={"use_sliding_window": False, "max_window_layers": 28}),
    "qwen3": ArchSpec("qwen3", 1000000.0, bos=None, eos=3, gen_eos=3,
                      extra={"head_dim": QWEN3_HEAD_DIM, "attention_bias": False}),
}
ARCHS = tuple(SPECS)


def build_checkpoint(
    folder: str | Path,
    arch: str,
    *,
    dtype: str = "float32",
    num_layers: int = 2,
    num_kv_heads: int = 2,
    shard_bytes: int | None = None,
    tie_word_embeddings: bool | None = None,
    rope_scaling: dict[str, Any] | None = None,
    seed: int = 0,
    vocab_size: int = 384,
    transformers_layout: Literal["v5", "v4"] = "v5",
    init_std: float = 0.2,
    eos_token_id: int | list[int] | None = None,
    bos_token_id: int | None = None,
) -> Path:
    """Write a random ``arch`` checkpoint into ``folder`` (created) and return the folder.

    ``shard_bytes`` splits the weights into ``model-0000i-of-0000n.safetensors`` files plus
    ``model.safetensors.index.json``; ``rope_scaling`` (e.g. ``{"rope_type": "linear", "factor": 2.0}``)
    and ``tie_word_embeddings`` override the arch's own; ``eos_token_id`` sets both config.json and
    generation_config.json; ``transformers_layout="v4"`` rewrites config.json as transformers 4 wrote it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if transformers_layout not in LAYOUTS:
        raise ValueError(f"transformers_layout must be one of {LAYOUTS}, not {transformers_layout!r}")
    if arch not in SPECS:
        raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHS)}")
    spec = SPECS[arch]
    rope = rope_scaling if rope_scaling is not None else spec.rope
    eos = eos_token_id if eos_token_id is not None else spec.eos
    gen_eos = eos_token_id if eos_token_id is not None else spec.gen_eos
    bos = bos_token_id if bos_token_id is not None else spec.bos
    config = AutoConfig.for_model(
        spec.model_type,
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=num_layers,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        initializer_range=init_std,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta, **(rope or {})},
        tie_word_embeddings=spec.tied if tie_word_embeddings is None else tie_word_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        **spec.extra,
    )
    with torch.random.fork_rng(devices=[]):  # transformers' own init must not move the caller's RNG
        model = AutoModelForCausalLM.from_config(config)
    _randomize(model, seed=seed, std=init_std)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=gen_eos)
    model.to(getattr(torch, dtype))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=shard_bytes if shard_bytes is not None else "50GB")
    if transformers_layout == "v4":
        to_transformers_v4_layout(out)
    return out


@torch.no_grad()
def _randomize(model: torch.nn.Module, *, seed: int, std: float) -> None:
    """Seeded normal weights, biases around 0 and norm weights around 1 (named order: reproducible)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if name.endswith("norm.weight"):
            param.copy_(1.0 + 0.2 * noise)
        else:
            param.copy_(std * noise)


def to_transformers_v4_layout(folder: str | Path) -> dict[str, Any]:
    """Rewrite ``folder/config.json`` the way transformers 4.x saved it; returns the new dict.

    transformers 5 writes ``rope_parameters`` (theta and scaling together) and ``dtype``;
    transformers 4 wrote ``rope_theta``, ``rope_scaling`` (null for plain rotary) and ``torch_dtype``.
    Qwen2 configs of that era also carried an unused ``sliding_window`` next to
    ``use_sliding_window: false``, which the engine must ignore.
    """
    path = Path(folder) / "config.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    rope = dict(raw.pop("rope_parameters", None) or {})
    theta = rope.pop("rope_theta", 10000.0)
    raw["rope_theta"] = theta
    raw["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    raw["torch_dtype"] = raw.pop("dtype", "float32")
    raw.pop("layer_types", None)
    if raw.get("model_type") == "qwen2" and raw.get("use_sliding_window") is False:
        raw["sliding_window"] = 32768
    raw["transformers_version"] = "4.46.0"
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return raw


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, for tests that edit or inspect it."""
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def write_config(folder: str | Path, raw: dict[str, Any]) -> None:
    (Path(folder) / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
