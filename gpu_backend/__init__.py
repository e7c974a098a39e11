"""The inference backend: models, paged KV cache, continuous batching, kernels and the serving API.

    from gpu_backend import LLM, SamplingParams
    llm = LLM("path/to/hf-folder", device="cpu", dtype="float32")
    out = llm.generate(["Once upon a time"], SamplingParams(temperature=0.0, max_tokens=50))

Names are imported on first use, so ``import gpu_backend`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    CheckpointError,
    EngineError,
    InvalidRequestError,
    PromptTooLongError,
    RequestAbortedError,
    UnsupportedArchitectureError,
)

_LAZY = {
    "LLM": "gpu_backend.engine.llm",
    "AsyncLLM": "gpu_backend.engine.async_llm",
    "LLMEngine": "gpu_backend.engine.engine",
    "SamplingParams": "gpu_backend.engine.sampling_params",
    "RequestOutput": "gpu_backend.engine.outputs",
    "EngineOutput": "gpu_backend.engine.outputs",
    "CompletionOutput": "gpu_backend.engine.outputs",
    "EngineConfig": "gpu_backend.config",
    "ModelConfig": "gpu_backend.config",
}

__all__ = [
    *_LAZY,
    "CheckpointError",
    "EngineError",
    "InvalidRequestError",
    "PromptTooLongError",
    "RequestAbortedError",
    "UnsupportedArchitectureError",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gpu_backend' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
