"""The BERT encoder (``BertModel``): token ids in, one hidden vector per token out, in plain torch.

It serves embeddings models (all-MiniLM-L6-v2 and other sentence-transformers BERTs), so it runs a
whole padded batch in one call and keeps no KV cache; it does not go through the Llama engine.
Parameter names are shorter than the checkpoint's; `param_name` maps one onto the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from ..config import _read_json
from ..errors import CheckpointError, UnsupportedArchitectureError
from ..loader import weight_files
from ..weights.reader import open_weights

# transformers' ACT2FN names: "gelu" is the exact erf GELU, the others its tanh approximation.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# Checkpoint prefixes of the parts an encoder does not use: the MLM/NSP heads and the [CLS] pooler.
_UNUSED_PREFIXES = ("cls.", "pooler.")
# Per-layer names below ``encoder.layer.{i}.``, checkpoint -> ours.
_LAYER_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_out",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "mlp_in",
    "output.dense": "mlp_out",
    "output.LayerNorm": "mlp_norm",
}
# Checkpoints converted from the original TensorFlow BERT name LayerNorm's parameters gamma and beta.
_LEGACY_SUFFIXES = {"gamma": "weight", "beta": "bias"}


@dataclass(frozen=True)
class BertConfig:
    """The encoder's shape and numerics, from the checkpoint's config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in GELU_APPROXIMATIONS:
            supported = ", ".join(GELU_APPROXIMATIONS)
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; supported: {supported}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BertConfig:
        source = Path(folder) / "config.json"
        raw = _read_json(Path(folder), "config.json", required=True) or {}
        if raw.get("model_type") != "bert" and "BertModel" not in (raw.get("architectures") or []):
            raise UnsupportedArchitectureError(f"{source}: model_type {raw.get('model_type')!r} is not a BERT encoder")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{source}: position_embedding_type {raw['position_embedding_type']!r} "
                                  "is not supported (only 'absolute')")
        return cls._from_dict(raw, source)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], source: Path) -> BertConfig:
        try:
            return cls(vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
                       intermediate_size=int(raw["intermediate_size"]),
                       num_hidden_layers=int(raw["num_hidden_layers"]),
                       num_attention_heads=int(raw["num_attention_heads"]),
                       max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
                       type_vocab_size=int(raw.get("type_vocab_size", 2)),
                       layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                       hidden_act=str(raw.get("hidden_act", "gelu")))
        except KeyError as missing:
            raise CheckpointError(f"{source}: required key {missing.args[0]!r} is missing") from None
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: {error}") from None


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.norm(hidden + self.position_embeddings(positions))


class BertLayer(nn.Module):
    """Self-attention then a GELU MLP, each added to its input and then LayerNorm'd (post-norm)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.mlp_in = nn.Linear(hidden, config.intermediate_size)
        self.mlp_out = nn.Linear(config.intermediate_size, hidden)
        self.mlp_norm = nn.LayerNorm(hidden, eps=eps)
        self.gelu_approximation = GELU_APPROXIMATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``key_mask`` [batch, 1, 1, seq_len] is True where a key is a real token, False on padding."""
        hidden = self.attention_norm(hidden + self.attention_out(self._attend(hidden, key_mask)))
        mlp = self.mlp_out(F.gelu(self.mlp_in(hidden), approximate=self.gelu_approximation))
        return self.mlp_norm(hidden + mlp)

    def _attend(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = hidden.shape
        q, k, v = (self._heads(proj(hidden)) for proj in (self.query, self.key, self.value))
        # Every row keeps at least its [CLS] key, so no softmax row is all -inf.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0 / math.sqrt(self.head_dim))
        return out.transpose(1, 2).reshape(batch, seq_len, -1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)


class BertModel(nn.Module):
    """Returns the last layer's hidden states [batch, seq_len, hidden]; pooling is the caller's job."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        key_mask = attention_mask.bool()[:, None, None, :]
        hidden = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            hidden = layer(hidden, key_mask)
        return hidden

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> BertModel:
        """The encoder of ``folder`` (config.json + safetensors), in eval mode on ``device``."""
        folder = Path(folder)
        with torch.device("meta"):
            model = cls(BertConfig.from_pretrained(folder))
        state = read_state_dict(folder)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:  # names or shapes do not match config.json
            raise CheckpointError(f"{folder}: the weights do not fit the BERT of its config.json: {error}") from None
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor the encoder needs from the folder's safetensors files, under our parameter names."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        try:
            with open_weights(file) as handle:  # plain or compressed safetensors
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    ours = param_name(name)
                    if ours is not None:
                        state[ours] = handle.get_tensor(name)
        except SafetensorError as error:
            raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None
    return state


def param_name(checkpoint_name: str) -> str | None:
    """``[bert.]encoder.layer.3.attention.self.query.weight`` -> ``layers.3.query.weight``; None if unused."""
    name = checkpoint_name.removeprefix("bert.")
    if name.startswith(_UNUSED_PREFIXES) or name == "embeddings.position_ids":  # position_ids: a saved buffer
        return None
    stem, _, suffix = name.rpartition(".")
    suffix = _LEGACY_SUFFIXES.get(suffix, suffix)
    if stem == "embeddings.LayerNorm":
        return f"embeddings.norm.{suffix}"
    if stem.startswith("encoder.layer."):
        index, _, rest = stem.removeprefix("encoder.layer.").partition(".")
        if rest in _LAYER_NAMES:
            return f"layers.{index}.{_LAYER_NAMES[rest]}.{suffix}"
    return f"{stem}.{suffix}"  # embeddings.*_embeddings pass through; anything else fails the strict load
