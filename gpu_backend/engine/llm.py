"""``LLM``: offline batched generation, the synchronous API vLLM users know."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

from ..config import EngineConfig
from .engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams

Message = dict[str, Any]


class LLM:
    """``LLM("path/to/hf-folder", device="cpu", dtype="float32")``; other keywords go to EngineConfig."""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", progress: bool = True,
                 **engine_options: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=str(model), device=device, dtype=dtype, **engine_options),
                                progress=progress)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str | list[int]],
                 params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run every prompt to completion, batched together; outputs come back in prompt order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        ids = []
        try:
            for prompt, param in zip(prompts, params):
                ids.append(self.engine.add_request(prompt, param, stream=False))
            return self._run(ids)
        except BaseException:
            for request_id in ids:
                self.engine.abort(request_id)
            raise

    def chat(self, messages: list[Message] | Seq[list[Message]], params: SamplingParams | None = None,
             **template_kwargs: Any) -> list[RequestOutput]:
        """Render each conversation with the model's chat template (generation prompt added) and generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, **template_kwargs)
                   for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, params)

    def _run(self, ids: list[str]) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        while len(finished) < len(ids):
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in ids]
