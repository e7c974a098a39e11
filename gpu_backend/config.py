"""Frozen configs: the model's shape read from an HF ``config.json``, and how the engine runs it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsupportedArchitectureError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GPU_MAX_NUM_SEQS = 256
CPU_MAX_NUM_SEQS_PER_CORE = 4


@dataclass(frozen=True)
class ModelConfig:
    """The decoder's shape and numerics; one class covers Llama, Mistral, Qwen2 and Qwen3."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None  # rope_type "linear" or "llama3" with its factors
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2; Llama's attention_bias sets qkv_bias and o_bias
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rotary
    sliding_window: int | None = None
    checkpoint_dtype: str = "float32"
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def max_context_len(self) -> int:
        """Tokens one sequence may hold: a sliding window we do not implement caps it at the window."""
        if self.sliding_window is not None and self.sliding_window < self.max_position_embeddings:
            return self.sliding_window
        return self.max_position_embeddings

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return 2 * self.num_hidden_layers * self.kv_size * dtype.itemsize

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelConfig:
        folder = Path(path)
        raw = _read_json(folder, "config.json", required=True)
        generation = _read_json(folder, "generation_config.json", required=False) or {}
        return cls.from_dict(raw, generation, source=folder / "config.json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], generation: dict[str, Any] | None = None, *,
                  source: Path | str = "config.json") -> ModelConfig:
        architecture = _architecture(raw, source)
        if raw.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            theta, scaling = _rope(raw, source)
            return cls(
                architecture=architecture,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                rope_theta=theta,
                rope_scaling=scaling,
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                **_biases(architecture, raw),
                qk_norm=architecture == "Qwen3ForCausalLM",
                sliding_window=_sliding_window(raw),
                checkpoint_dtype=_dtype_name(raw.get("dtype") or raw.get("torch_dtype") or "float32"),
                eos_token_ids=_eos_ids(raw, generation or {}),
                bos_token_id=raw.get("bos_token_id"),
            )
        except KeyError as missing:
            raise CheckpointError(f"{source}: required key {missing.args[0]!r} is missing") from None
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: {error}") from None


def _read_json(folder: Path, name: str, *, required: bool) -> dict[str, Any] | None:
    path = folder / name
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass the folder of a Hugging Face checkpoint")
    if not path.is_file():
        if required:
            raise CheckpointError(f"{folder} is not a Hugging Face checkpoint: it has no {name}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _architecture(raw: dict[str, Any], source: Path | str) -> str:
    names = raw.get("architectures") or []
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    found = ", ".join(names) or f"model_type {raw.get('model_type')!r}"
    raise UnsupportedArchitectureError(
        f"{source}: architecture {found} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _rope(raw: dict[str, Any], source: Path | str) -> tuple[float, dict[str, Any] | None]:
    """transformers 4 keeps ``rope_theta`` + ``rope_scaling``; 5 folds both into ``rope_parameters``."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    legacy_type = params.pop("type", None)  # transformers < 4.45 spelling; may sit beside rope_type
    rope_type = params.pop("rope_type", None) or legacy_type or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise CheckpointError(f"{source}: rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    return theta, {"rope_type": rope_type, **params}


def _biases(architecture: str, raw: dict[str, Any]) -> dict[str, bool]:
    """Which projections carry a bias, as each transformers model class decides (it ignores the other keys)."""
    attention_bias = bool(raw.get("attention_bias", False))
    if architecture == "Qwen2ForCausalLM":  # q/k/v always biased, o never
        return {"qkv_bias": True, "o_bias": False, "mlp_bias": False}
    if architecture == "MistralForCausalLM":
        return {"qkv_bias": False, "o_bias": False, "mlp_bias": False}
    mlp_bias = architecture == "LlamaForCausalLM" and bool(raw.get("mlp_bias", False))
    return {"qkv_bias": attention_bias, "o_bias": attention_bias, "mlp_bias": mlp_bias}


def _sliding_window(raw: dict[str, Any]) -> int | None:
    if raw.get("use_sliding_window") is False:  # Qwen2/3 carry a window they do not use
        return None
    window = raw.get("sliding_window")
    return int(window) if window else None


def _dtype_name(value: Any) -> str:
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype {value!r} is not supported; supported: {', '.join(DTYPES)}")
    return name


def _eos_ids(raw: dict[str, Any], generation: dict[str, Any]) -> tuple[int, ...]:
    value = generation.get("eos_token_id", raw.get("eos_token_id"))
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


@dataclass(frozen=True)
class EngineConfig:
    """How one engine runs its model: device, precision, KV cache size and batch limits."""

    model: str
    device: str = "auto"  # "cpu", "cuda", "cuda:1", or auto (cuda when present)
    dtype: str = "auto"  # auto: the checkpoint's dtype on GPU, float32 on CPU
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: sized from gpu_memory_utilization (GPU) or kv_cache_memory_gb (CPU)
    gpu_memory_utilization: float = 0.90
    kv_cache_memory_gb: float = 1.0  # CPU only
    max_num_seqs: int | None = None  # None: default_max_num_seqs(device), an int once constructed
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # no CUDA graphs
    async_scheduling: bool = True  # launch step k before reading step k-1's tokens back (see LLMEngine.step)
    attention_backend: str = "auto"  # triton | torch | auto
    # or "dummy": random weights of the right shapes, for benchmarks; with compressed_weights="kernel" the
    # linear layers' N(0, 0.02) weights are made and ECF-coded one tensor at a time on the device, never dense
    load_format: str = "safetensors"
    skip_tokenizer_init: bool = False  # token-id prompts only, outputs without text
    # An ECF-compressed checkpoint (docs/weights-format.md): "kernel" keeps the linear layers' weights
    # coded in GPU memory, decoded inside the matmuls (bf16 on CUDA; elsewhere it decodes at load): 0.78
    # of the memory, batch-1 decode 1.12x as fast, batches of 32+ about 0.43x (decoded into scratch);
    # "decode_at_load" decodes every tensor to dense while loading (the dense model's speed and memory).
    # Both answer as the uncompressed model does. "auto": "kernel" for an ECF folder, while
    # load_format="dummy" (no folder) stays dense unless "kernel" is named.
    compressed_weights: str = "auto"

    def __post_init__(self) -> None:
        if self.max_num_seqs is None:
            object.__setattr__(self, "max_num_seqs", default_max_num_seqs(self.torch_device))
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, not {self.block_size}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.load_format not in ("safetensors", "dummy"):
            raise ValueError(f"load_format must be safetensors or dummy, not {self.load_format!r}")
        if self.compressed_weights not in ("auto", "kernel", "decode_at_load"):
            raise ValueError(f"compressed_weights must be auto, kernel or decode_at_load, "
                             f"not {self.compressed_weights!r}")
        if self.attention_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"attention_backend must be auto, triton or torch, not {self.attention_backend!r}")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], not {self.gpu_memory_utilization}")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self, model: ModelConfig) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        return torch.float32 if self.torch_device.type == "cpu" else DTYPES[model.checkpoint_dtype]


def resolve_device(device: str) -> torch.device:
    """``auto``: cuda when present, else cpu; any other name as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, so a container's or taskset's limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_max_num_seqs(device: torch.device) -> int:
    """Sequences an engine runs at once unless told: 256 on a GPU; on CPU 4 per core. A CPU step's
    time grows with the batch, so 256 sequences on a few cores make each of them wait tens of
    seconds for its tokens, where a smaller batch and a 429 for the rest keep every answer fast."""
    if device.type != "cpu":
        return GPU_MAX_NUM_SEQS
    return CPU_MAX_NUM_SEQS_PER_CORE * available_cpus()

