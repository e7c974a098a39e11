"""The Llama decoder, which also covers Mistral, Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm per head).

Module names follow the checkpoints' so the loader maps tensors by name; q/k/v and gate/up are
fused into one matmul each (``packed_modules`` tells the loader where the parts go). Built for a
pipeline stage, the model holds only that stage's layers (``owns_weight`` tells the loader which).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels import Kernels
from ..layers.attention import Attention, AttentionMetadata
from ..layers.embedding import ParallelLMHead, VocabParallelEmbedding
from ..layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding
from ..parallel.pipeline import PipelineStage

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
Intermediate = tuple[torch.Tensor, torch.Tensor]  # (hidden, residual) passed from stage to stage


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, ops: Kernels) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_attention_heads,
                                          config.num_key_value_heads, bias=config.qkv_bias, ops=ops)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = config.head_dim
        self.o_proj = RowParallelLinear(config.q_size, config.hidden_size, bias=config.o_bias, ops=ops)
        rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                config.rope_scaling, ops)
        self.attn = Attention(self.num_heads, self.num_kv_heads, config.head_dim, ops, rotary=rotary)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, ops)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, ops)
        self.qk_norm = config.qk_norm

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                norm: RMSNorm, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of norm(hidden + residual); returns its output and the new residual."""
        qkv, residual = self.qkv_proj.forward_normed(hidden, residual, norm)
        q, k, v = qkv.split([self.qkv_proj.q_size, self.qkv_proj.kv_size, self.qkv_proj.kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q = self.q_norm(q.reshape(-1, self.head_dim)).view_as(q)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view_as(k)
        out = self.attn(positions, q, k, v, meta)  # rotates q and k on the way into the cache
        return self.o_proj(out.reshape(-1, self.num_heads * self.head_dim)), residual


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, ops: Kernels) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [size, size], bias=config.mlp_bias, ops=ops)
        self.down_proj = RowParallelLinear(size, config.hidden_size, bias=config.mlp_bias, ops=ops)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """down(silu(gate) * up) of norm(hidden + residual), and the new residual. On the batch-1
        GEMV path the norm runs inside gate_up's kernel and the SiLU inside down's."""
        gate_up, residual = self.gate_up_proj.forward_normed(hidden, residual, norm)
        return self.down_proj.forward_gated(gate_up), residual


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, ops: Kernels) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, ops)
        self.mlp = LlamaMLP(config, ops)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.self_attn(positions, hidden, residual, self.input_layernorm, meta)
        return self.mlp(hidden, residual, self.post_attention_layernorm)


class OtherStageLayer(nn.Module):
    """Stands in for a decoder layer that another pipeline stage holds: no parameters, and it keeps
    the numbering of ``model.layers.{i}`` so checkpoint names still match."""


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, ops: Kernels, stage: PipelineStage) -> None:
        super().__init__()
        self.stage = stage
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size) if stage.is_first else None
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, ops) if index in stage.layers else OtherStageLayer()
                                    for index in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops) if stage.is_last else None

    def stage_layers(self) -> list[LlamaDecoderLayer]:
        return [self.layers[index] for index in self.stage.layers]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                intermediate: Intermediate | None = None) -> torch.Tensor | Intermediate:
        if self.embed_tokens is not None:
            hidden, residual = self.embed_tokens(input_ids), None
        elif intermediate is None:
            raise ValueError(f"{self.stage} starts from the previous stage's (hidden, residual): pass intermediate")
        else:
            hidden, residual = intermediate
        for layer in self.stage_layers():
            hidden, residual = layer(positions, hidden, residual, meta)
        if self.norm is None:
            return hidden, residual  # for the next stage; every stage has a layer, so residual is set
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, ops: Kernels, stage: PipelineStage | None = None) -> None:
        super().__init__()
        self.config = config
        self.stage = stage or PipelineStage.whole(config.num_hidden_layers)
        self.stage.check_fits(config.num_hidden_layers)
        self.model = LlamaModel(config, ops, self.stage)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, ops) if self.stage.is_last else None
        # One parameter serves both ends only where one stage holds both; a last stage without the
        # embedding fills its own lm_head from the checkpoint's embedding tensor (an alias).
        self.tie_word_embeddings = config.tie_word_embeddings and self.stage.is_first and self.stage.is_last
        self.weight_aliases: dict[str, str] = {}
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        elif config.tie_word_embeddings and self.stage.is_last:
            self.weight_aliases = {EMBED: LM_HEAD}

    def stage_layers(self) -> list[LlamaDecoderLayer]:
        """This stage's decoder layers in order (all of them for a whole model)."""
        return self.model.stage_layers()

    def owns_weight(self, name: str) -> bool:
        """Whether checkpoint tensor ``name`` belongs to this stage; the loader skips the others."""
        if name.startswith("model.layers."):
            return int(name.split(".")[2]) in self.stage.layers
        if name.startswith("model.embed_tokens."):
            return self.stage.is_first or name in self.weight_aliases
        if name.startswith(("model.norm.", "lm_head.")):
            return self.stage.is_last
        return True  # a name no stage knows is the loader's to reject

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                intermediate: Intermediate | None = None) -> torch.Tensor | Intermediate:
        """The last stage's final hidden states, or (hidden, residual) for the next stage."""
        return self.model(input_ids, positions, meta, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
