"""Which model class serves which Hugging Face ``architectures`` entry."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..errors import UnsupportedArchitectureError
from ..kernels import Kernels
from ..parallel.pipeline import PipelineStage
from .llama import LlamaForCausalLM

MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,  # qkv bias, from ModelConfig.qkv_bias
    "Qwen3ForCausalLM": LlamaForCausalLM,  # q/k norm, from ModelConfig.qk_norm
}


def build_model(config: ModelConfig, ops: Kernels, stage: PipelineStage | None = None) -> nn.Module:
    """The model for ``config``: the whole of it, or only one pipeline ``stage``'s layers."""
    try:
        model_class = MODELS[config.architecture]
    except KeyError:
        raise UnsupportedArchitectureError(f"no model for architecture {config.architecture!r}") from None
    return model_class(config, ops, stage)
