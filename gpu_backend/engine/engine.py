"""``LLMEngine``: the offline engine vLLM users know, an ``EngineCore`` whose outputs carry text.

Each request gets a ``RequestText`` here. Every step's new ids go through it, a stop string ends
the request in the core at once, and ``step`` returns vLLM's cumulative ``RequestOutput`` (the
whole completion so far, plus what the step added). ``LLM`` drives it to completion. Serving
does not come through here: ``AsyncLLM`` and a sharded instance's driver run the core, and the
service makes the text (``server/text.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import EngineConfig, ModelConfig
from ..detokenizer import RequestText
from .block_manager import BlockManager
from .core import EngineCore, EngineRequest
from .model_runner import ModelRunner
from .outputs import CompletionOutput, EngineOutput, Logprob, RequestOutput
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence
from .stats import StepStats


@dataclass
class _Completion:
    """What a request has produced so far, for its cumulative output."""

    prompt: str | None
    prompt_token_ids: list[int]
    text: RequestText
    stream: bool  # report every step; otherwise only the finished output
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Logprob] | None = None
    stop_reason: str | int | None = None


class LLMEngine:
    def __init__(self, config: EngineConfig, *, progress: bool = True, runner: ModelRunner | None = None) -> None:
        """``runner``: one built elsewhere; by default this process runs the model."""
        self.core = EngineCore(config, progress=progress, runner=runner)
        self.config = config
        self.tokenizer = self.core.tokenizer
        self.max_model_len = self.core.max_model_len
        self._completions: dict[str, _Completion] = {}

    # The core's parts, for callers that look inside (tests, benchmarks).
    @property
    def model_config(self) -> ModelConfig:
        return self.core.model_config

    @property
    def runner(self) -> ModelRunner:
        return self.core.runner

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def block_manager(self) -> BlockManager:
        return self.core.block_manager

    @property
    def stats(self) -> StepStats:
        return self.core.stats

    @property
    def requests(self) -> dict[str, EngineRequest]:
        return self.core.requests

    @property
    def held(self) -> dict[str, Sequence]:
        return self.core.held

    # -- requests ------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, *, stream: bool = True, hold_blocks: bool = False) -> str:
        """Validate and queue one request; raises InvalidRequestError / PromptTooLongError.

        ``stream=False``: ``step`` reports the request only when it finishes (offline batches
        skip building a cumulative output per token). ``hold_blocks``: see ``EngineCore.add_request``."""
        request_id = self.core.add_request(prompt, params, request_id, hold_blocks=hold_blocks)
        self._track(request_id, prompt, stream)
        return request_id

    def reserve(self, prompt: list[int], params: SamplingParams | None, request_id: str) -> list[int] | None:
        """See ``EngineCore.reserve``."""
        blocks = self.core.reserve(prompt, params, request_id)
        if blocks is not None:
            self._track(request_id, prompt, stream=True)
        return blocks

    def admit(self, request_id: str, first_token: int) -> RequestOutput | None:
        """See ``EngineCore.admit``; the first token (sampled elsewhere) starts this request's text."""
        completion = self._completions[request_id]
        completion.pieces.append(completion.text.add((first_token,)).text)  # a stop string there ends it next step
        completion.token_ids.append(first_token)
        output = self.core.admit(request_id, first_token)
        return self._cumulative(output) if output is not None else None

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is; its KV blocks are free when this returns."""
        output = self.core.abort(request_id)
        if output is None:
            self._completions.pop(request_id, None)
            return None
        return self._cumulative(output)

    def release_blocks(self, request_id: str) -> None:
        self.core.release_blocks(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        """One step of the core (see ``EngineCore.step``); an output for every request that gained
        a token or finished (only finished ones for ``stream=False`` requests)."""
        outputs = [self._cumulative(output) for output in self.core.step()]
        return [output for output in outputs if output is not None]

    # -- text ----------------------------------------------------------------------------------

    def _track(self, request_id: str, prompt: str | list[int], stream: bool) -> None:
        seq = self.core.requests[request_id].seq
        params = seq.sampling_params
        text = RequestText(self.tokenizer, stop=params.stop, skip_special_tokens=params.skip_special_tokens,
                           include_stop_str_in_output=params.include_stop_str_in_output)
        self._completions[request_id] = _Completion(
            prompt if isinstance(prompt, str) else None, seq.prompt_token_ids, text, stream,
            logprobs=[] if params.logprobs is not None else None)

    def _cumulative(self, output: EngineOutput) -> RequestOutput | None:
        """Feed an output's ids to the request's text; a stop string there ends the request."""
        completion = self._completions[output.request_id]
        update = completion.text.add(output.new_token_ids, finished=output.finished,
                                      stop_token=output.finish_reason == "stop")
        kept = list(output.new_token_ids[:update.num_tokens])
        completion.pieces.append(update.text)
        completion.token_ids += kept
        if completion.logprobs is not None and output.new_logprobs is not None:
            completion.logprobs += output.new_logprobs[:update.num_tokens]
        finish_reason = update.finish_reason(output.finish_reason, len(output.new_token_ids))
        if update.stopped:
            completion.stop_reason = completion.text.stop_reason
            if not output.finished:
                self.core.finish(output.request_id, "stop")
        elif finish_reason == "stop" and completion.token_ids:
            completion.stop_reason = completion.token_ids[-1]  # a stop token
        if finish_reason is not None:
            del self._completions[output.request_id]
        elif not completion.stream:
            return None
        return _request_output(output, completion, finish_reason, update.text, kept)


def _request_output(output: EngineOutput, completion: _Completion, finish_reason: str | None, delta_text: str,
                    delta_token_ids: list[int]) -> RequestOutput:
    finished = finish_reason is not None
    result = CompletionOutput(
        index=0, text="".join(completion.pieces), token_ids=list(completion.token_ids), finish_reason=finish_reason,
        stop_reason=completion.stop_reason if finished else None,
        logprobs=list(completion.logprobs) if completion.logprobs is not None else None)
    return RequestOutput(output.request_id, completion.prompt, completion.prompt_token_ids, [result], finished,
                         delta_text, delta_token_ids, output.num_cached_tokens)
